"""The toy model's body (docs/method.md section 8): one MLP branch per feature, concatenated.

The input is the toy's ``(B, 3)`` vector ``[x_easy, x_hard_1, x_hard_2]``. ``Φ_easy = MLP(1→h→h→k)`` and
``Φ_hard = MLP(2→h→h→k)`` (ReLU), and the representation is ``[Φ_easy, Φ_hard]``: with ``k = 1`` the linear head's
two weights are ``v_easy`` and ``v_hard`` of the paper's ratio plots (docs/method.md section 5).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _mlp(in_features: int, hidden: int, out_features: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_features, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, out_features),
    )


class TwoBranchMLP(nn.Module):
    """Two-branch body whose representation has one block of columns per feature.

    Args:
        hidden: width ``h`` of both branches.
        block_size: ``k``, the representation columns per feature.

    Example:
        >>> body = TwoBranchMLP(hidden=8, block_size=1)
        >>> tuple(body(torch.zeros(5, 3)).shape), body.out_features, body.feature_blocks["hard"]
        ((5, 2), 2, slice(1, 2, None))
    """

    def __init__(self, hidden: int = 64, block_size: int = 1) -> None:
        super().__init__()
        if hidden < 1:
            raise ValueError(f"hidden must be >= 1, got {hidden}")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.easy = _mlp(1, hidden, block_size)
        self.hard = _mlp(2, hidden, block_size)
        self.out_features = 2 * block_size
        self.feature_blocks = {"easy": slice(0, block_size), "hard": slice(block_size, 2 * block_size)}

    def forward(self, x: Tensor) -> Tensor:
        """``(B, out_features)`` representation of the input batch."""
        if x.ndim != 2 or x.shape[1] != 3:
            raise ValueError(f"TwoBranchMLP expects (B, 3) inputs [x_easy, x_hard_1, x_hard_2], got {tuple(x.shape)}")
        return torch.cat([self.easy(x[:, :1]), self.hard(x[:, 1:])], dim=1)
