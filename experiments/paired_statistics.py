"""Paired comparisons over seeds: bootstrap confidence interval, sign test, rank correlation.

Each seed is one pair (same data, initialisation and batch order for both methods), so every comparison is made on
the per-seed differences.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch


class Interval(NamedTuple):
    """The mean of the differences and its percentile-bootstrap confidence interval."""

    mean: float
    low: float
    high: float


def bootstrap_ci(
    differences: Sequence[float], confidence: float = 0.95, resamples: int = 10_000, seed: int = 0
) -> Interval:
    """Percentile-bootstrap interval of the mean of paired differences (seeded, so reports are reproducible).

    Example:
        >>> bootstrap_ci([0.5, 0.5, 0.5])
        Interval(mean=0.5, low=0.5, high=0.5)
        >>> bootstrap_ci([])
        Interval(mean=nan, low=nan, high=nan)
    """
    values = torch.tensor([d for d in differences if math.isfinite(d)], dtype=torch.float64)
    if values.numel() == 0:
        return Interval(math.nan, math.nan, math.nan)
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(0, len(values), (resamples, len(values)), generator=generator)
    means = values[draws].mean(dim=1)
    alpha = (1 - confidence) / 2
    low, high = torch.quantile(means, torch.tensor([alpha, 1 - alpha], dtype=torch.float64)).tolist()
    return Interval(float(values.mean()), low, high)


def sign_test(differences: Sequence[float]) -> float:
    """Two-sided exact sign test of "the median difference is 0" (zero differences dropped); 1 when none is left.

    Example:
        >>> sign_test([1.0] * 10)  # 2 · 0.5^10
        0.001953125
        >>> sign_test([1.0, -1.0, 2.0, -2.0])
        1.0
    """
    nonzero = [d for d in differences if math.isfinite(d) and d != 0]
    n, positive = len(nonzero), sum(d > 0 for d in nonzero)
    if n == 0:
        return 1.0
    k = min(positive, n - positive)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1  # ties share their average rank
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (ties get average ranks); NaN when either side is constant.

    Example:
        >>> spearman([1, 2, 3, 4], [10, 20, 25, 100]), spearman([1, 2, 3], [3, 2, 1])
        (1.0, -1.0)
    """
    if len(x) != len(y):
        raise ValueError(f"need paired values, got {len(x)} and {len(y)}")
    rx, ry = torch.tensor(_ranks(x), dtype=torch.float64), torch.tensor(_ranks(y), dtype=torch.float64)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = float(rx.norm() * ry.norm())
    if denominator == 0:
        return math.nan
    return max(-1.0, min(1.0, round(float((rx * ry).sum()) / denominator, 12)))
