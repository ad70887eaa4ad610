"""Accuracy per group, the worst group's, and the average weighted by training group sizes.

Groups follow docs/method.md section 7 (``2·y + spurious`` for the two-feature datasets). The "average accuracy" of the
group-robustness literature weights each group's test accuracy by that group's share of the *training* set.
Groups with no examples give ``nan`` and are left out of the worst-group and average figures.
"""

from __future__ import annotations

import torch
from torch import Tensor


def group_counts(preds: Tensor, target: Tensor, group: Tensor, num_groups: int) -> tuple[Tensor, Tensor]:
    """``(correct, total)``, each ``(num_groups,)``: per-group correct predictions and examples.

    Examples with a group outside ``[0, num_groups)`` (``-1``: no group) are ignored.

    Example:
        >>> correct, total = group_counts(torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1]), torch.tensor([0, 0, 1]), 3)
        >>> correct.tolist(), total.tolist()
        ([1, 1, 0], [2, 1, 0])
    """
    keep = (group >= 0) & (group < num_groups)
    group, hit = group[keep].long(), (preds[keep] == target[keep]).long()
    correct = torch.zeros(num_groups, dtype=torch.long, device=group.device).index_add_(0, group, hit)
    total = torch.bincount(group, minlength=num_groups)
    return correct, total


def group_accuracy(correct: Tensor, total: Tensor) -> Tensor:
    """``(G,)`` per-group accuracy, ``nan`` where a group has no examples.

    Example:
        >>> group_accuracy(torch.tensor([1, 3, 0]), torch.tensor([2, 4, 0])).tolist()
        [0.5, 0.75, nan]
    """
    return torch.where(total > 0, correct.double() / total.clamp_min(1), torch.nan).float()


def worst_group_accuracy(accuracy: Tensor) -> Tensor:
    """The lowest accuracy among the groups that have examples.

    Example:
        >>> worst_group_accuracy(torch.tensor([0.5, 0.75, float("nan")])).item()
        0.5
    """
    present = accuracy[~accuracy.isnan()]
    if present.numel() == 0:
        raise ValueError("no group has any example")
    return present.min()


def average_group_accuracy(accuracy: Tensor, weights: Tensor) -> Tensor:
    """Per-group accuracy averaged with ``weights`` (training group sizes), over the groups that have examples.

    Example:
        >>> average_group_accuracy(torch.tensor([1.0, 0.5, float("nan")]), torch.tensor([3, 1, 5])).item()
        0.875
    """
    if weights.shape != accuracy.shape:
        raise ValueError(f"weights {tuple(weights.shape)} must match accuracy {tuple(accuracy.shape)}")
    present = ~accuracy.isnan()
    w = weights.to(accuracy.device, torch.float64) * present
    if w.sum() == 0:
        raise ValueError("the groups that have examples all have zero weight")
    return ((accuracy.double().nan_to_num(0.0) * w).sum() / w.sum()).float()
