"""The linear probe that measures feature quality (docs/method.md section 6).

L2-regularised multinomial logistic regression on standardised representations, solved full-batch with L-BFGS
(strong-Wolfe line search) in torch, on the representation's device. The objective for a regularisation strength
``l2`` is

    mean_i CE(W x̂_i + b, y_i) + l2 / 2 · ‖W‖²_F,        x̂ = (x − mean) / std,

with the bias unpenalised; it is scikit-learn's ``LogisticRegression(C=1 / (l2 · n))`` for three or more classes.
``l2`` is chosen from a grid on a held-out, class-stratified part of the training data (best held-out accuracy,
ties to the stronger regularisation), solved along the grid from strong to weak with warm starts and a looser
tolerance, and the probe is then refit on all the data to the full tolerance. Nothing is random except the
seeded split, so the fit is deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

DEFAULT_L2_GRID: tuple[float, ...] = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5)


@dataclass
class LinearProbe:
    """A fitted probe: ``logits(x) = W (x − mean) / std + b``.

    Attributes:
        weight: ``(C, D)`` weights acting on standardised representations.
        bias: ``(C,)``.
        mean: ``(D,)`` per-dimension mean of the training representations.
        std: ``(D,)`` per-dimension standard deviation (1 where a dimension is constant).
        l2: the regularisation strength the probe was fitted with.
    """

    weight: Tensor
    bias: Tensor
    mean: Tensor
    std: Tensor
    l2: float

    def logits(self, x: Tensor) -> Tensor:
        """``(N, C)`` logits of ``(N, D)`` representations."""
        return F.linear((x - self.mean) / self.std, self.weight, self.bias)

    def predict(self, x: Tensor) -> Tensor:
        """``(N,)`` predicted classes."""
        return self.logits(x).argmax(dim=1)

    def accuracy(self, x: Tensor, y: Tensor) -> float:
        """Fraction of ``(x, y)`` pairs the probe classifies correctly."""
        return (self.predict(x) == y).float().mean().item()

    def representation_weight(self) -> Tensor:
        """``(C, D)`` weights acting on raw representations: ``W / std`` (the standardisation folded in)."""
        return self.weight / self.std

    def to(self, device: torch.device | str) -> LinearProbe:
        """A copy with every tensor on ``device``."""
        return LinearProbe(
            self.weight.to(device), self.bias.to(device), self.mean.to(device), self.std.to(device), self.l2
        )


def fit_linear_probe(
    x: Tensor,
    y: Tensor,
    num_classes: int | None = None,
    l2_grid: Sequence[float] = DEFAULT_L2_GRID,
    val_fraction: float = 0.2,
    seed: int = 0,
    max_iter: int = 500,
    tolerance_grad: float = 1e-5,
    selection_tolerance: float = 1e-4,
) -> LinearProbe:
    """Fits an L2-regularised multinomial logistic-regression probe, choosing ``l2`` on held-out data.

    Args:
        x: ``(N, D)`` representations (any float dtype; solved in ``float32`` or wider, on ``x.device``).
        y: ``(N,)`` integer labels in ``[0, num_classes)``; at least two distinct classes.
        num_classes: ``C``; by default ``y.max() + 1``.
        l2_grid: candidate regularisation strengths (``>= 0``). With one value, or ``val_fraction == 0``, that
            value (the strongest) is used without a held-out split.
        val_fraction: share of every class held out to choose ``l2``.
        seed: seeds the held-out split.
        max_iter: L-BFGS iterations per fit.
        tolerance_grad: the final fit stops when every gradient entry is below this.
        selection_tolerance: the same for the fits that only choose ``l2``: held-out accuracy settles long
            before the last digits of the solution do, and these fits are most of the cost.

    Returns:
        The probe refit on all of ``(x, y)`` with the chosen ``l2``.

    Example:
        >>> x = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.2, 0.9], [0.8, 0.1], [0.1, 1.1], [0.9, 0.2]])
        >>> probe = fit_linear_probe(x, torch.tensor([0, 1, 0, 1, 0, 1]), val_fraction=0.34)
        >>> probe.predict(torch.tensor([[0.0, 2.0], [2.0, 0.0]])).tolist(), tuple(probe.weight.shape)
        ([0, 1], (2, 2))
    """
    if x.ndim != 2:
        raise ValueError(f"x must be (N, D) representations, got shape {tuple(x.shape)}")
    if y.ndim != 1 or len(y) != len(x):
        raise ValueError(f"y must be (N,) = ({len(x)},) labels, got shape {tuple(y.shape)}")
    if x.is_floating_point() is False:
        raise ValueError(f"x must be a float tensor, got {x.dtype}")
    if not l2_grid or any(not lam >= 0 for lam in l2_grid):
        raise ValueError(f"l2_grid must be a non-empty sequence of values >= 0, got {list(l2_grid)}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    y = y.long()
    classes = torch.unique(y)
    if len(classes) < 2:
        raise ValueError(
            f"fit_linear_probe needs at least two classes in y, got only class {classes.tolist()}: "
            "a probe cannot be fitted on a label that never varies"
        )
    if num_classes is None:
        num_classes = int(y.max()) + 1
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise ValueError(f"y must lie in [0, {num_classes}), got labels in [{int(y.min())}, {int(y.max())}]")

    dtype = torch.promote_types(x.dtype, torch.float32)
    x = x.to(dtype)
    mean = x.mean(dim=0)
    std = x.std(dim=0, unbiased=False)
    std = torch.where(std > 1e-12 * std.max().clamp_min(1.0), std, torch.ones_like(std))
    z = (x - mean) / std  # (N, D) standardised representations

    grid = sorted((float(lam) for lam in l2_grid), reverse=True)  # strong to weak: each fit warm-starts the next
    weight = torch.zeros(num_classes, x.shape[1], dtype=dtype, device=x.device)
    bias = torch.zeros(num_classes, dtype=dtype, device=x.device)
    l2 = grid[0]
    if len(grid) > 1 and val_fraction > 0:
        fit_idx, val_idx = held_out_split(y, val_fraction, seed)
        z_fit, y_fit, z_val, y_val = z[fit_idx], y[fit_idx], z[val_idx], y[val_idx]
        best_acc, best = -1.0, (weight, bias)
        for lam in grid:
            weight, bias = _solve(z_fit, y_fit, lam, weight, bias, max_iter, selection_tolerance)
            acc = (F.linear(z_val, weight, bias).argmax(1) == y_val).double().mean().item()
            if acc > best_acc:  # strict: ties go to the stronger regularisation, seen first
                best_acc, best, l2 = acc, (weight, bias), lam
        weight, bias = best
    weight, bias = _solve(z, y, l2, weight, bias, max_iter, tolerance_grad)
    return LinearProbe(weight, bias, mean, std, l2)


def held_out_split(
    y: Tensor, val_fraction: float, seed: int | torch.Generator = 0, min_held_out: int = 0
) -> tuple[Tensor, Tensor]:
    """Sorted indices ``(fit, held_out)``: ``round(val_fraction · n_c)`` examples of every class ``c`` held out.

    Seeded and device-independent (drawn on the CPU); at least ``min_held_out`` examples of every class are held out
    and at least one stays in ``fit``. Every class draws one permutation, in class order; ``y = torch.zeros(n)``
    splits without strata.

    Args:
        y: ``(N,)`` class labels, the strata.
        val_fraction: the share of every class held out.
        seed: an int seed, or a generator to draw the permutations from (it advances).
        min_held_out: the fewest examples of a class held out, where the class has more than one.

    Example:
        >>> fit, held_out = held_out_split(torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 1, 1]), 0.5)
        >>> len(fit), len(held_out), sorted(torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])[held_out].tolist())
        (5, 5, [0, 0, 1, 1, 1])
        >>> [len(part) for part in held_out_split(torch.zeros(3), 0.1, min_held_out=1)]
        [2, 1]
    """
    generator = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(seed)
    y_cpu = y.cpu()
    fit, held_out = [], []
    for c in torch.unique(y_cpu):
        members = torch.nonzero(y_cpu == c).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        n_held_out = min(max(round(val_fraction * len(members)), min_held_out), len(members) - 1)
        held_out.append(members[:n_held_out])
        fit.append(members[n_held_out:])
    return torch.cat(fit).sort().values.to(y.device), torch.cat(held_out).sort().values.to(y.device)


def _solve(
    z: Tensor, y: Tensor, l2: float, weight: Tensor, bias: Tensor, max_iter: int, tolerance_grad: float
) -> tuple[Tensor, Tensor]:
    """Minimises the probe objective from ``(weight, bias)`` with full-batch L-BFGS; returns new tensors."""
    weight = weight.clone().requires_grad_(True)
    bias = bias.clone().requires_grad_(True)
    onehot = F.one_hot(y, weight.shape[0]).to(z.dtype)  # (N, C)
    n = len(z)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        history_size=10,
        tolerance_grad=tolerance_grad,
        tolerance_change=1e-10,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        # closed-form gradient: no autograd graph over the (N, D) data
        with torch.no_grad():
            logits = F.linear(z, weight, bias)
            log_p = logits.log_softmax(dim=1)
            loss = -(log_p * onehot).sum() / n + 0.5 * l2 * weight.square().sum()
            residual = (log_p.exp() - onehot) / n  # (N, C) d loss / d logits
            weight.grad = residual.T @ z + l2 * weight
            bias.grad = residual.sum(dim=0)
        return loss

    optimizer.step(closure)
    return weight.detach(), bias.detach()
