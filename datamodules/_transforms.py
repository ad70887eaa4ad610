"""Image transforms shared by the image datamodules: ImageNet-style ResNet inputs and the small CNN's size.

Follows the Group DRO / DFR preprocessing of CelebA and Waterbirds: resize the shorter side to
``size / crop_fraction`` (256 for 224), center-crop ``size``, ImageNet mean/std normalisation; with augmentation
a random resized crop (scale 0.7 to 1) and a horizontal flip instead of the deterministic crop.
"""

from __future__ import annotations

from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_SIZE = 224  # ImageNet-style ResNets
SMALL_CNN_SIZE = 64  # the paper's from-scratch CNN (docs/method.md section 7) on natural images


def image_transform(size: int = IMAGENET_SIZE, augment: bool = False, crop_fraction: float = 224 / 256) -> T.Compose:
    """The transform from a PIL RGB image to a normalised ``(3, size, size)`` float tensor.

    Args:
        size: side of the square output (224 for ImageNet-style ResNets, 64 for the small CNN).
        augment: random resized crop and horizontal flip (training only); otherwise resize and center crop.
        crop_fraction: ``size`` over the side the shorter image side is resized to before the center crop.

    Example:
        >>> from PIL import Image
        >>> x = image_transform(32)(Image.new("RGB", (178, 218)))
        >>> tuple(x.shape), x.dtype
        ((3, 32, 32), torch.float32)
    """
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if not 0 < crop_fraction <= 1:
        raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
    if augment:
        geometry = [T.RandomResizedCrop(size, scale=(0.7, 1.0), antialias=True), T.RandomHorizontalFlip()]
    else:
        geometry = [T.Resize(round(size / crop_fraction), antialias=True), T.CenterCrop(size)]
    return T.Compose([*geometry, T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
