"""Deprecated alias: the tiny CelebA writer lives in :mod:`lightning_sam.datamodules.demos` with the others."""

import warnings

from lightning_sam.datamodules.demos import CELEBA_ATTRIBUTES, write_tiny_celeba
from lightning_sam.datamodules.demos import TINY_CELEBA_COUNTS as TINY_COUNTS

__all__ = ["CELEBA_ATTRIBUTES", "TINY_COUNTS", "write_tiny_celeba"]

warnings.warn(
    "lightning_sam.datamodules.tiny_celeba is deprecated and will be removed: use lightning_sam.datamodules.demos",
    DeprecationWarning,
    stacklevel=2,
)
