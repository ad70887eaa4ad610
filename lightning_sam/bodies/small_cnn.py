"""The paper's from-scratch convolutional body for the two-feature image datasets (docs/method.md section 7).

Conv(3→32, k5, s2, p2), ReLU, Conv(32→64, k3, s2, p1), ReLU, Conv(64→128, k3, s2, p1), ReLU, Flatten; the linear
head of :class:`~lightning_sam.SAMClassifier` follows. Flattening makes the representation size depend on the
input size, so it is computed from ``input_shape``.
"""

from __future__ import annotations

from torch import Tensor, nn

# (out_channels, kernel, stride, padding) of the three convolutions
LAYERS = ((32, 5, 2, 2), (64, 3, 2, 1), (128, 3, 2, 1))


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Side length after a convolution: ``floor((size + 2 * padding - kernel) / stride) + 1``.

    Example:
        >>> conv_output_size(64, kernel=5, stride=2, padding=2), conv_output_size(3, kernel=3, stride=2, padding=1)
        (32, 2)
    """
    return (size + 2 * padding - kernel) // stride + 1


class SmallCNN(nn.Module):
    """Three stride-2 convolutions with ReLU, flattened: the paper's small CNN body.

    Args:
        input_shape: ``(channels, height, width)`` of one input; 3x64x32 is CIFAR-MNIST's domino.

    Example:
        >>> import torch
        >>> body = SmallCNN(input_shape=(3, 64, 32))
        >>> body.out_features, tuple(body(torch.zeros(2, 3, 64, 32)).shape)
        (4096, (2, 4096))
    """

    def __init__(self, input_shape: tuple[int, int, int] = (3, 64, 32)) -> None:
        super().__init__()
        if len(input_shape) != 3 or min(input_shape) < 1:
            raise ValueError(f"input_shape must be (channels, height, width) of positive sizes, got {input_shape}")
        channels, height, width = input_shape
        layers: list[nn.Module] = []
        for out_channels, kernel, stride, padding in LAYERS:
            layers += [nn.Conv2d(channels, out_channels, kernel, stride, padding), nn.ReLU()]
            channels = out_channels
            height = conv_output_size(height, kernel, stride, padding)
            width = conv_output_size(width, kernel, stride, padding)
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.input_shape = tuple(input_shape)
        self.out_features = channels * height * width

    def forward(self, x: Tensor) -> Tensor:
        """``(B, out_features)`` representation of the input batch."""
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"SmallCNN was built for inputs {self.input_shape} (its out_features depend on it), got "
                f"{tuple(x.shape[1:])}; set input_shape to match the datamodule's images."
            )
        return self.features(x)
