"""Importance weights and margin contributions of one toy checkpoint, for the report's Figures 3 and 5.

The same fixed training examples and the same per-batch phantom points as :class:`ImportanceWeights` (the first
``num_examples`` of a seeded permutation, in batches of the training batch size), computed from saved weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_sam.callbacks.perturbation import perturbed_parameter_names
from lightning_sam.experiments.margin import margin_contribution
from lightning_sam.experiments.toy_run import ToyRunConfig, toy_data, toy_model
from lightning_sam.functional import importance_weights, phantom_point


@dataclass
class CheckpointWeights:
    """Per-example quantities of one checkpoint on the fixed training examples (all ``(N,)``).

    Attributes:
        real: importance weights ``λ`` at the real parameters.
        phantom: ``λ̃`` at each batch's phantom point (equal to ``real`` for SGD, whose ``ρ`` is 0).
        easy_margin: the easy feature's contribution to the real margin.
        hard_margin: the hard feature's contribution.
    """

    real: Tensor
    phantom: Tensor
    easy_margin: Tensor
    hard_margin: Tensor


@torch.no_grad()
def checkpoint_weights(
    config: ToyRunConfig, state: dict[str, Tensor], num_examples: int = 1024, seed: int = 0
) -> CheckpointWeights:
    """Loads ``state`` into the run's model and measures it on the run's fixed training examples."""
    model = toy_model(config)
    model.load_state_dict(state)
    model.eval()
    datamodule = toy_data(config)
    datamodule.setup("fit")
    dataset = datamodule.train_dataset
    chosen = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:num_examples].sort().values
    x, y = dataset.x[chosen], dataset.y[chosen]
    names = perturbed_parameter_names(model, model.perturbation_scope)
    out: dict[str, list[Tensor]] = {"real": [], "phantom": [], "easy": [], "hard": []}
    for xb, yb in zip(x.split(config.batch_size), y.split(config.batch_size), strict=True):
        point = phantom_point(model, xb, yb, model.rho, names)
        out["real"].append(importance_weights(point.real_logits, yb))
        out["phantom"].append(importance_weights(point.phantom_logits, yb))
        rep = model.representation(xb)
        for name in ("easy", "hard"):
            out[name].append(margin_contribution(rep, yb, model.head.weight, model.body.feature_blocks[name]))
    cat = {k: torch.cat(v) for k, v in out.items()}
    return CheckpointWeights(cat["real"], cat["phantom"], cat["easy"], cat["hard"])
