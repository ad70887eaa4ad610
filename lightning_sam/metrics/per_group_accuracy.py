"""Per-group accuracy as a torchmetrics ``Metric``: summed correct/total counts, synced across processes."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from lightning_sam.functional.group_accuracy import group_accuracy, group_counts


class PerGroupAccuracy(Metric):
    """``(num_groups,)`` accuracy of each group (``nan`` for a group with no examples).

    Args:
        num_groups: number of groups; examples with a group outside ``[0, num_groups)`` are ignored.

    Example:
        >>> metric = PerGroupAccuracy(num_groups=2)
        >>> metric.update(torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1]), torch.tensor([0, 0, 1]))
        >>> metric.compute().tolist()
        [0.5, 1.0]
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, num_groups: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if num_groups < 1:
            raise ValueError(f"num_groups must be >= 1, got {num_groups}")
        self.num_groups = num_groups
        self.add_state("correct", default=torch.zeros(num_groups, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.zeros(num_groups, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor, group: Tensor) -> None:
        """Counts a batch of ``(B,)`` predicted classes, labels and group ids."""
        correct, total = group_counts(preds, target, group, self.num_groups)
        self.correct += correct
        self.total += total

    def compute(self) -> Tensor:
        """Per-group accuracy over everything seen since the last reset."""
        return group_accuracy(self.correct, self.total)
