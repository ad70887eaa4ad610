"""Deprecated alias of :mod:`lightning_sam.datamodules._transforms`, private to the datamodules now."""

import warnings

from lightning_sam.datamodules._transforms import (
    IMAGENET_MEAN,
    IMAGENET_SIZE,
    IMAGENET_STD,
    SMALL_CNN_SIZE,
    image_transform,
)

__all__ = ["IMAGENET_MEAN", "IMAGENET_SIZE", "IMAGENET_STD", "SMALL_CNN_SIZE", "image_transform"]

warnings.warn(
    "lightning_sam.datamodules.transforms is deprecated and will be removed: it is private now, "
    "lightning_sam.datamodules._transforms",
    DeprecationWarning,
    stacklevel=2,
)
