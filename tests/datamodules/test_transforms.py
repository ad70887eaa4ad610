"""Tests of the shared image transforms: sizes, ImageNet normalisation, augmentation only when asked."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from lightning_sam.datamodules._transforms import IMAGENET_MEAN, IMAGENET_STD, SMALL_CNN_SIZE, image_transform


@pytest.mark.parametrize("size", [224, SMALL_CNN_SIZE])
def test_eval_transform_gives_square_imagenet_normalised_input(size: int) -> None:
    mean_colour = tuple(round(255 * m) for m in IMAGENET_MEAN)
    x = image_transform(size)(Image.new("RGB", (178, 218), mean_colour))  # CelebA's aligned size
    assert x.shape == (3, size, size)
    assert x.abs().max() < 0.5 / 255 / min(IMAGENET_STD)  # the ImageNet mean colour maps to about zero


def test_augmentation_is_random_and_off_by_default() -> None:
    image = Image.frombytes("RGB", (40, 30), bytes(range(240)) * 15)
    plain = image_transform(16)
    assert torch.equal(plain(image), plain(image))
    torch.manual_seed(0)
    augmented = image_transform(16, augment=True)
    outputs = [augmented(image) for _ in range(4)]
    assert all(o.shape == (3, 16, 16) for o in outputs)
    assert any(not torch.equal(outputs[0], o) for o in outputs[1:])


def test_invalid_size_names_the_argument() -> None:
    with pytest.raises(ValueError, match="size"):
        image_transform(0)
