"""Deprecated alias of :mod:`lightning_sam.datamodules._seeded_epoch_sampler`, private to the datamodules now."""

import warnings

from lightning_sam.datamodules._seeded_epoch_sampler import SeededEpochSampler

__all__ = ["SeededEpochSampler"]

warnings.warn(
    "lightning_sam.datamodules.seeded_epoch_sampler is deprecated and will be removed: it is private now, "
    "lightning_sam.datamodules._seeded_epoch_sampler",
    DeprecationWarning,
    stacklevel=2,
)
