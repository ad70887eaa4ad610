"""The Gini coefficient of importance weights as a torchmetrics ``Metric`` (docs/method.md section 4).

Weights are gathered (a ``cat`` state, synced across processes on ``compute``), because the Gini coefficient of
the union is not a function of per-process Gini coefficients.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from lightning_sam.functional.inequality import gini_coefficient


class GiniCoefficient(Metric):
    """Gini coefficient of every non-negative weight seen since the last reset, over all processes.

    Example:
        >>> import torch
        >>> metric = GiniCoefficient()
        >>> metric.update(torch.tensor([0.0, 0.0]))
        >>> metric.update(torch.tensor([0.0, 2.0]))
        >>> metric.compute().item()
        0.75
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("weights", default=[], dist_reduce_fx="cat")

    def update(self, weights: Tensor) -> None:
        """Adds a batch of weights (any shape; flattened)."""
        if bool((weights < 0).any()):
            raise ValueError("GiniCoefficient needs weights >= 0")
        self.weights.append(weights.detach().flatten().float())

    def compute(self) -> Tensor:
        """The Gini coefficient of all the weights gathered."""
        return gini_coefficient(dim_zero_cat(self.weights))
