"""Tests of the image bodies: the paper's small CNN and the torchvision ResNets (no downloads)."""

from __future__ import annotations

import urllib.error

import pytest
import torch
from torch import nn
from torchvision import models

from lightning_sam.bodies import ResNetBody, SmallCNN


@pytest.mark.parametrize("input_shape", [(3, 64, 32), (3, 64, 64), (1, 28, 28), (3, 7, 5)])
def test_small_cnn_out_features_match_output_for_input_shape(input_shape: tuple[int, int, int]) -> None:
    body = SmallCNN(input_shape=input_shape)
    out = body(torch.randn(2, *input_shape))
    assert out.shape == (2, body.out_features)


def test_small_cnn_has_the_papers_layers() -> None:
    convs = [m for m in SmallCNN().modules() if isinstance(m, nn.Conv2d)]
    spec = [(c.in_channels, c.out_channels, c.kernel_size[0], c.stride[0], c.padding[0]) for c in convs]
    assert spec == [(3, 32, 5, 2, 2), (32, 64, 3, 2, 1), (64, 128, 3, 2, 1)]
    assert SmallCNN((3, 64, 32)).out_features == 128 * 8 * 4


def test_small_cnn_rejects_inputs_of_another_shape() -> None:
    with pytest.raises(ValueError, match="input_shape"):
        SmallCNN((3, 64, 32))(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="input_shape"):
        SmallCNN((3, 0, 32))


@pytest.mark.parametrize(("depth", "out_features"), [(18, 512), (50, 2048)])
def test_resnet_body_drops_fc_and_reports_out_features(depth: int, out_features: int) -> None:
    body = ResNetBody(depth=depth, pretrained=False)
    assert isinstance(body.resnet.fc, nn.Identity)
    assert body.out_features == out_features
    assert body.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, out_features)


def test_resnet_body_rejects_unknown_depth() -> None:
    with pytest.raises(ValueError, match="depth"):
        ResNetBody(depth=34)  # type: ignore[arg-type]


def test_resnet_body_loads_imagenet_weights_safely(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(1)
    reference = models.resnet18(weights=None).state_dict()
    calls: list[dict] = []

    def fake_get_state_dict(self, **kwargs):  # stands in for the hub download
        calls.append(kwargs)
        return reference

    monkeypatch.setattr(models.ResNet18_Weights, "get_state_dict", fake_get_state_dict)
    body = ResNetBody(depth=18, pretrained=True)
    assert calls
    assert calls[0]["weights_only"] is True
    assert torch.equal(body.resnet.conv1.weight, reference["conv1.weight"])


def test_resnet_body_unreachable_weights_give_manual_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(self, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(models.ResNet50_Weights, "get_state_dict", offline)
    with pytest.raises(RuntimeError) as info:
        ResNetBody(depth=50, pretrained=True)
    message = str(info.value)
    assert "resnet50-0676ba61.pth" in message
    assert "checkpoints" in message
    assert "pretrained false" in message
