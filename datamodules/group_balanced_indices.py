"""Deprecated alias of :mod:`lightning_sam.datamodules._group_balanced_indices`, private to the datamodules now."""

import warnings

from lightning_sam.datamodules._group_balanced_indices import group_balanced_indices

__all__ = ["group_balanced_indices"]

warnings.warn(
    "lightning_sam.datamodules.group_balanced_indices is deprecated and will be removed: it is private now, "
    "lightning_sam.datamodules._group_balanced_indices",
    DeprecationWarning,
    stacklevel=2,
)
