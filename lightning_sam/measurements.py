"""Which measurement callbacks ``train.py`` attaches, chosen by flag and by what the datamodule provides."""

from __future__ import annotations

from dataclasses import dataclass

import pytorch_lightning as pl
from pytorch_lightning import Callback

from lightning_sam.callbacks import FeatureProbe, GroupAccuracy, ImportanceWeights, LearningRateScaling


@dataclass
class Measurements:
    """The ``--measure.*`` flags of ``train.py``.

    Args:
        probe: per-feature linear probes (``probe/<feature>/acc``), on datamodules with probe splits.
        importance: Gini coefficients and Lorenz curves of real and phantom importance weights.
        scaling: the learning-rate scaling ratios ``v_hard/v_easy`` and ``ṽ_hard/ṽ_easy`` (feature directions from
            the body's ``feature_blocks``, else from the probes).
        groups: per-group and worst-group accuracy, on datamodules with groups.
        every_n_epochs: how often the epoch-end measurements run.
    """

    probe: bool = True
    importance: bool = True
    scaling: bool = True
    groups: bool = True
    every_n_epochs: int = 1

    def __post_init__(self) -> None:
        if self.every_n_epochs < 1:
            raise ValueError(f"measure.every_n_epochs must be >= 1, got {self.every_n_epochs}")


def measurement_callbacks(measure: Measurements, datamodule: pl.LightningDataModule) -> list[Callback]:
    """The callbacks that ``measure`` asks for and ``datamodule`` can feed.

    Example:
        >>> from lightning_sam.datamodules import ToyDataModule
        >>> [type(c).__name__ for c in measurement_callbacks(Measurements(), ToyDataModule())]
        ['FeatureProbe', 'ImportanceWeights', 'LearningRateScaling', 'GroupAccuracy']
        >>> [type(c).__name__ for c in measurement_callbacks(Measurements(), pl.LightningDataModule())]
        ['ImportanceWeights']
    """
    n = measure.every_n_epochs
    features = tuple(getattr(datamodule, "feature_names", ()))
    has_probe_splits = bool(features) and hasattr(datamodule, "probe_dataloaders")
    callbacks: list[Callback] = []
    if measure.probe and has_probe_splits:
        callbacks.append(FeatureProbe(every_n_epochs=n))
    if measure.importance:
        callbacks.append(ImportanceWeights(every_n_epochs=n))
    if measure.scaling and len(features) >= 2:
        callbacks.append(LearningRateScaling(every_n_epochs=n))
    if measure.groups and getattr(datamodule, "num_groups", 0) > 0:
        callbacks.append(GroupAccuracy())
    return callbacks
