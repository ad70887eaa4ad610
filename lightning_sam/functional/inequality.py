"""How unevenly a set of non-negative weights is spread: the Lorenz curve and the Gini coefficient.

docs/method.md section 4. For weights ``w_1..w_n >= 0`` sorted ascending, the Lorenz curve joins the points
``(k/n, Σ_{j<=k} w_(j) / Σ_j w_j)`` for ``k = 0..n`` (the diagonal when all weights are equal), and the Gini
coefficient is ``G = Σ_i (2i − n − 1) w_(i) / (n Σ_i w_i)`` with 1-based ``i``: ``0`` for equal weights, at most
``1 − 1/n`` (all the weight on one example). Both ignore the order of the weights and their overall scale.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _check_weights(w: Tensor) -> Tensor:
    if w.ndim != 1 or w.numel() == 0:
        raise ValueError(f"weights must be a non-empty 1-D tensor, got shape {tuple(w.shape)}")
    if not w.is_floating_point():
        w = w.float()
    if bool((w < 0).any()) or not bool(torch.isfinite(w).all()):
        raise ValueError("weights must be finite and >= 0")
    return w


def gini_coefficient(w: Tensor) -> Tensor:
    """The Gini coefficient of non-negative weights, a 0-d tensor in ``[0, 1 − 1/n]``.

    All-zero weights count as perfectly even (``0``).

    Example:
        >>> gini_coefficient(torch.ones(4)).item()
        0.0
        >>> gini_coefficient(torch.tensor([0.0, 0.0, 0.0, 2.0])).item()
        0.75
    """
    w = _check_weights(w).double()  # the alternating-sign sum cancels badly in float32 for large n
    n = w.numel()
    total = w.sum()
    if total == 0:
        return torch.zeros((), dtype=torch.float32, device=w.device)
    i = torch.arange(1, n + 1, dtype=w.dtype, device=w.device)
    gini = ((2 * i - n - 1) * w.sort().values).sum() / (n * total)
    return gini.float()


def lorenz_curve(w: Tensor) -> tuple[Tensor, Tensor]:
    """The Lorenz curve of non-negative weights: ``(x, y)``, each ``(n + 1,)``, from ``(0, 0)`` to ``(1, 1)``.

    All-zero weights give the diagonal.

    Example:
        >>> x, y = lorenz_curve(torch.tensor([3.0, 1.0]))
        >>> x.tolist(), y.tolist()
        ([0.0, 0.5, 1.0], [0.0, 0.25, 1.0])
    """
    w = _check_weights(w).double()
    n = w.numel()
    x = torch.arange(n + 1, dtype=w.dtype, device=w.device) / n
    total = w.sum()
    if total == 0:
        return x.float(), x.float()
    y = torch.cat([w.new_zeros(1), w.sort().values.cumsum(0) / total])
    y[-1] = 1.0  # exact end point despite rounding in the cumulative sum
    return x.float(), y.float()


def within_class_gini(w: Tensor, y: Tensor) -> Tensor:
    """The Gini coefficient of each class's weights, averaged with the class sizes as weights.

    A perturbation that shifts a whole class (the head's bias does this near initialisation) moves the overall
    Gini coefficient without re-balancing easy against hard examples of a class; this one does not see it.

    Example:
        >>> w = torch.tensor([1.0, 1.0, 3.0, 3.0])  # even within each class, uneven between them
        >>> gini_coefficient(w).item(), within_class_gini(w, torch.tensor([0, 0, 1, 1])).item()
        (0.25, 0.0)
    """
    w = _check_weights(w)
    if y.shape != w.shape:
        raise ValueError(f"need one label per weight, got {tuple(w.shape)} weights and {tuple(y.shape)} labels")
    total = torch.zeros((), dtype=torch.float64, device=w.device)
    for label in torch.unique(y):
        members = w[y == label]
        total += gini_coefficient(members).double() * members.numel()
    return (total / w.numel()).float()
