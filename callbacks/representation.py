"""Deprecated alias of :mod:`lightning_sam.callbacks._representation`, private to the callbacks now."""

import warnings

from lightning_sam.callbacks._representation import RepresentationSpec, detect_head, final_linear, representation

__all__ = ["RepresentationSpec", "detect_head", "final_linear", "representation"]

warnings.warn(
    "lightning_sam.callbacks.representation is deprecated and will be removed: it is private now, "
    "lightning_sam.callbacks._representation",
    DeprecationWarning,
    stacklevel=2,
)
