"""Pure maths behind the optimizer and the callbacks.

The perturbation, probes, importance-weight inequality, phantom points, feature weights, groups.
"""

from lightning_sam.functional.group_accuracy import (
    average_group_accuracy,
    group_accuracy,
    group_counts,
    worst_group_accuracy,
)
from lightning_sam.functional.importance import (
    PhantomPoint,
    head_gradient,
    head_phantom,
    importance_weights,
    phantom_point,
)
from lightning_sam.functional.inequality import gini_coefficient, lorenz_curve, within_class_gini
from lightning_sam.functional.learning_rate_scaling import (
    FeatureScaling,
    block_directions,
    centred_head,
    feature_contrast,
    feature_scaling,
    feature_vector,
    feature_weight,
    log_relative_gain,
    probe_directions,
)
from lightning_sam.functional.linear_probe import LinearProbe, fit_linear_probe, held_out_split
from lightning_sam.functional.perturbation import (
    Perturbation,
    PerturbationNorms,
    PerturbationSpec,
    global_norm,
    perturbation,
    perturbed_point,
)

__all__ = [
    "FeatureScaling",
    "LinearProbe",
    "Perturbation",
    "PerturbationNorms",
    "PerturbationSpec",
    "PhantomPoint",
    "average_group_accuracy",
    "block_directions",
    "centred_head",
    "feature_contrast",
    "feature_scaling",
    "feature_vector",
    "feature_weight",
    "fit_linear_probe",
    "gini_coefficient",
    "global_norm",
    "group_accuracy",
    "group_counts",
    "head_gradient",
    "head_phantom",
    "held_out_split",
    "importance_weights",
    "log_relative_gain",
    "lorenz_curve",
    "perturbation",
    "perturbed_point",
    "phantom_point",
    "probe_directions",
    "within_class_gini",
    "worst_group_accuracy",
]
