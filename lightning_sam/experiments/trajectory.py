"""Pure helpers for judging a training trajectory: when to measure, and which measurements count.

The paper's mechanism (METHOD.md sections 4 and 5) acts while the training set is still being fitted. Once the
loss is near zero the importance weights underflow onto a handful of examples and say little, so the toy report
judges the Gini coefficients and ratios on the *trajectory*: the measurements taken before the smoothed training
loss first falls below a threshold (issue 5).
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def measurement_steps(max_steps: int, dense: int = 16, growth: float = 1.25) -> list[int]:
    """Optimizer steps at which to measure: every step up to ``dense``, then geometrically sparser, and the last.

    Dense early because SGD fits the toy within about one epoch; sparse later because little changes there.

    Example:
        >>> measurement_steps(40, dense=4, growth=1.5)
        [1, 2, 3, 4, 6, 9, 13, 19, 28, 40]
    """
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    if dense < 1 or not growth > 1:
        raise ValueError(f"need dense >= 1 and growth > 1, got {dense} and {growth}")
    steps = list(range(1, min(dense, max_steps) + 1))
    while steps[-1] < max_steps:
        steps.append(min(max_steps, max(steps[-1] + 1, math.floor(steps[-1] * growth))))
    return steps


def smoothed(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over the last ``window`` values (fewer at the start).

    Example:
        >>> smoothed([4.0, 2.0, 0.0, 2.0], window=2)
        [4.0, 3.0, 1.0, 1.0]
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def first_step_below(step_losses: Sequence[float], threshold: float, window: int = 8) -> int | None:
    """The first optimizer step (1-based) at which the trailing-mean training loss is below ``threshold``.

    ``step_losses[i]`` is the batch loss of step ``i + 1``. ``None`` if the loss never gets there.

    Example:
        >>> first_step_below([0.9, 0.5, 0.1, 0.01, 0.0], threshold=0.2, window=2)
        4
        >>> first_step_below([0.9, 0.8], threshold=0.2) is None
        True
    """
    for i, loss in enumerate(smoothed(step_losses, window)):
        if loss < threshold:
            return i + 1
    return None


def window_mean(steps: Sequence[int], values: Sequence[float], end: int | None) -> float:
    """Mean of the values measured at steps before ``end`` (all of them when ``end`` is ``None``).

    The first measurement always counts, so a run that fits at once still has a value.

    Example:
        >>> window_mean([1, 2, 4, 8], [1.0, 3.0, 5.0, 7.0], end=4)
        2.0
        >>> window_mean([1, 2], [1.0, 3.0], end=1), window_mean([1, 2], [1.0, 3.0], end=None)
        (1.0, 2.0)
    """
    if len(steps) != len(values) or not steps:
        raise ValueError(f"need as many steps as values, and at least one; got {len(steps)} and {len(values)}")
    chosen = [v for s, v in zip(steps, values, strict=True) if end is None or s < end] or [values[0]]
    return sum(chosen) / len(chosen)
