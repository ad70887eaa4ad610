"""Deprecated alias: the tiny Waterbirds writer lives in :mod:`lightning_sam.datamodules.demos` with the others."""

import warnings

from lightning_sam.datamodules.demos import TINY_WATERBIRDS_COUNTS as TINY_COUNTS
from lightning_sam.datamodules.demos import write_tiny_waterbirds

__all__ = ["TINY_COUNTS", "write_tiny_waterbirds"]

warnings.warn(
    "lightning_sam.datamodules.tiny_waterbirds is deprecated and will be removed: use lightning_sam.datamodules.demos",
    DeprecationWarning,
    stacklevel=2,
)
