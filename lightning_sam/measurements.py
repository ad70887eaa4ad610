"""Which measurement callbacks ``train.py`` attaches, chosen by flag and by what the datamodule provides."""

from __future__ import annotations

from dataclasses import dataclass

import pytorch_lightning as pl
from pytorch_lightning import Callback


@dataclass
class Measurements:
    """The ``--measure.*`` flags of ``train.py``.

    Args:
        probe: per-feature linear probes (``probe/<feature>/acc``), on datamodules with probe splits.
        importance: Gini coefficients and Lorenz curves of real and phantom importance weights.
        scaling: the learning-rate scaling ratios ``v_hard/v_easy`` and ``ṽ_hard/ṽ_easy``.
        groups: per-group and worst-group accuracy, on datamodules with groups.
        every_n_epochs: how often the epoch-end measurements run.
    """

    probe: bool = True
    importance: bool = True
    scaling: bool = True
    groups: bool = True
    every_n_epochs: int = 1


def measurement_callbacks(measure: Measurements, datamodule: pl.LightningDataModule) -> list[Callback]:
    """The callbacks that ``measure`` asks for and ``datamodule`` can feed."""
    return []
