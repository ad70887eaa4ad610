"""Deprecated alias of :mod:`lightning_sam.callbacks._batch_fields`, private to the callbacks now."""

import warnings

from lightning_sam.callbacks._batch_fields import batch_features, batch_group, batch_input, batch_target

__all__ = ["batch_features", "batch_group", "batch_input", "batch_target"]

warnings.warn(
    "lightning_sam.callbacks.batch_fields is deprecated and will be removed: it is private now, "
    "lightning_sam.callbacks._batch_fields",
    DeprecationWarning,
    stacklevel=2,
)
