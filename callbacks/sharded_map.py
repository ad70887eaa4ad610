"""Deprecated alias of :mod:`lightning_sam.callbacks._sharded_map`, private to the callbacks now."""

import warnings

from lightning_sam.callbacks._sharded_map import sharded_map

__all__ = ["sharded_map"]

warnings.warn(
    "lightning_sam.callbacks.sharded_map is deprecated and will be removed: it is private now, "
    "lightning_sam.callbacks._sharded_map",
    DeprecationWarning,
    stacklevel=2,
)
