"""Callbacks that measure how SAM learns features; each works with any LightningModule (see the README)."""

from lightning_sam.callbacks.feature_probe import FeatureProbe
from lightning_sam.callbacks.group_accuracy import GroupAccuracy
from lightning_sam.callbacks.importance_weights import ImportanceWeights
from lightning_sam.callbacks.learning_rate_scaling import LearningRateScaling
from lightning_sam.callbacks.sharpness_aware import SharpnessAware
from lightning_sam.callbacks.transfer_probe import TransferProbe

__all__ = [
    "FeatureProbe",
    "GroupAccuracy",
    "ImportanceWeights",
    "LearningRateScaling",
    "SharpnessAware",
    "TransferProbe",
]
