"""Deprecated alias of :mod:`lightning_sam.callbacks._evaluation_mode`, private to the callbacks now."""

import warnings

from lightning_sam.callbacks._evaluation_mode import evaluation_mode

__all__ = ["evaluation_mode"]

warnings.warn(
    "lightning_sam.callbacks.evaluation_mode is deprecated and will be removed: it is private now, "
    "lightning_sam.callbacks._evaluation_mode",
    DeprecationWarning,
    stacklevel=2,
)
