"""torchvision ResNet-18/50 as a body: the classifier ``fc`` replaced by the identity, optionally ImageNet weights.

The paper uses ResNets for CelebA, Waterbirds and DomainBed (docs/method.md section 7). Pretrained weights are
torchvision's ``IMAGENET1K_V1`` (the original release, which Group DRO and DomainBed use), fetched into torch's
hub cache and loaded with ``weights_only=True``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn
from torchvision import models

_ARCHITECTURES = {
    18: (models.resnet18, models.ResNet18_Weights.IMAGENET1K_V1, 512),
    50: (models.resnet50, models.ResNet50_Weights.IMAGENET1K_V1, 2048),
}


class ResNetBody(nn.Module):
    """A torchvision ResNet up to its global average pool: ``(B, 3, H, W)`` to ``(B, out_features)``.

    Args:
        depth: 18 (512 features) or 50 (2048 features).
        pretrained: start from torchvision's ImageNet weights (downloaded once into torch's hub cache).

    Raises:
        ValueError: an unsupported ``depth``.
        RuntimeError: the ImageNet weights could not be fetched or read; the message says where to put them.

    Example:
        >>> body = ResNetBody(depth=18, pretrained=False)
        >>> body.out_features, tuple(body(torch.zeros(2, 3, 32, 32)).shape)
        (512, (2, 512))
    """

    def __init__(self, depth: Literal[18, 50] = 50, pretrained: bool = False) -> None:
        super().__init__()
        if depth not in _ARCHITECTURES:
            raise ValueError(f"depth must be 18 or 50, got {depth!r}")
        build, weights, out_features = _ARCHITECTURES[depth]
        self.resnet = build(weights=None)
        if pretrained:
            self.resnet.load_state_dict(_imagenet_state_dict(weights, depth))
        self.resnet.fc = nn.Identity()
        self.depth = depth
        self.out_features = out_features

    def forward(self, x: Tensor) -> Tensor:
        """``(B, out_features)`` representation of the input batch."""
        return self.resnet(x)


def _imagenet_state_dict(weights: models.WeightsEnum, depth: int) -> dict[str, Tensor]:
    """The checkpoint of ``weights``, from the hub cache or the network, read with ``weights_only=True``."""
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    try:
        return weights.get_state_dict(progress=True, check_hash=True, weights_only=True)
    except Exception as e:  # URLError when offline, RuntimeError on a hash mismatch, UnpicklingError on a bad file
        raise RuntimeError(
            f"Could not fetch the ImageNet weights of ResNet-{depth} from {weights.url}: {type(e).__name__}: {e}. "
            f"Download that file by hand to {cached} (torch reads it from there; set TORCH_HOME to move the "
            "cache), or train from scratch with pretrained false (--model.body.init_args.pretrained false)."
        ) from e
