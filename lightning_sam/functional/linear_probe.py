"""The linear probe that measures feature quality (docs/method.md section 6).

L2-regularised multinomial logistic regression on standardised representations, solved full-batch in torch, on the
representation's device: with Newton's method (Armijo line search) when the probe is small, else with L-BFGS
(strong-Wolfe line search). The objective for a regularisation strength ``l2`` is

    mean_i CE(W x̂_i + b, y_i) + l2 / 2 · ‖W‖²_F,        x̂ = (x − mean) / std,

with the bias unpenalised; it is scikit-learn's ``LogisticRegression(C=1 / (l2 · n))`` for three or more classes.
``l2`` is chosen from a grid on a held-out, class-stratified part of the training data (best held-out accuracy,
ties to the stronger regularisation) with a looser tolerance (Newton's method solves the whole grid at once as a
batch; L-BFGS along the grid from strong to weak with warm starts), and the probe is then refit on all the data to
the full tolerance. Nothing is random except the seeded split, so the fit is deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

DEFAULT_L2_GRID: tuple[float, ...] = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5)

NEWTON_MAX_PARAMETERS = 40
"""Probes with at most this many parameters, ``C · (D + 1)``, are solved with Newton's method, larger ones with L-BFGS.

Newton's method needs a handful of iterations where L-BFGS needs tens, but each builds and factors the ``P x P``
Hessian, ``O(N P² + P³)``. On the CPU the two break even near ``P = 40`` for two classes (``D ≈ 20``); more classes
favour Newton further (``benchmarks/probe_solver_cost.py``).
"""
_MAX_HALVINGS = 30


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
        max_iter: Newton or L-BFGS iterations per fit.
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
        best_acc = -1.0
        for lam, (fit_weight, fit_bias) in zip(
            grid, _solve_grid(z_fit, y_fit, grid, weight, bias, max_iter, selection_tolerance), strict=True
        ):
            acc = (F.linear(z_val, fit_weight, fit_bias).argmax(1) == y_val).double().mean().item()
            if acc > best_acc:  # strict: ties go to the stronger regularisation, seen first
                best_acc, weight, bias, l2 = acc, fit_weight, fit_bias, lam
    ((weight, bias),) = _solve_grid(z, y, [l2], weight, bias, max_iter, tolerance_grad)
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


def _solve_grid(
    z: Tensor, y: Tensor, grid: Sequence[float], weight: Tensor, bias: Tensor, max_iter: int, tolerance_grad: float
) -> list[tuple[Tensor, Tensor]]:
    """The probe's ``(weight, bias)`` minimising the objective for every ``l2`` in ``grid``, from ``(weight, bias)``.

    Small probes are solved with Newton's method, every ``l2`` at once as a batch from the start; larger ones with
    L-BFGS, one ``l2`` after another along ``grid`` (strong to weak), each warm-starting the next. The optimum is
    the same either way, to within ``tolerance_grad``.
    """
    if weight.numel() + bias.numel() <= NEWTON_MAX_PARAMETERS:
        return _solve_newton(z, y, grid, weight, bias, max_iter, tolerance_grad)
    solutions = []
    for l2 in grid:
        weight, bias = _solve_lbfgs(z, y, l2, weight, bias, max_iter, tolerance_grad)
        solutions.append((weight, bias))
    return solutions


def _solve_lbfgs(
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


def _solve_newton(
    z: Tensor, y: Tensor, grid: Sequence[float], weight: Tensor, bias: Tensor, max_iter: int, tolerance_grad: float
) -> list[tuple[Tensor, Tensor]]:
    """Minimises the probe objective for every ``l2`` in ``grid`` from ``(weight, bias)`` with Newton's method.

    The parameters are ``theta = [W | b]``, ``(C, D + 1)``, acting on ``u = [x̂ | 1]``; the ``K = len(grid)``
    problems are solved as a batch, each stopping when its largest gradient entry is below ``tolerance_grad``.

    The objective does not change when one vector is added to every row of ``theta`` (the softmax's shift
    invariance; for the weights only while ``l2 = 0``), so the Hessian is singular along these shared shifts. It
    maps the shared shifts and their complement each to itself, and from a start whose rows sum to zero (every
    start here: the first is zero) the gradient has no shared-shift part. Adding the projector onto the shared
    shifts to the Hessian therefore leaves the Newton step exact on the complement and zero along the shifts: the
    iterates keep rows summing to zero, the optimum L-BFGS reaches from the same start (its steps are sums of
    gradients). Steps are damped by a backtracking (Armijo) line search.
    """
    n, d = z.shape
    c, k, size = weight.shape[0], len(grid), weight.shape[0] * (d + 1)
    dtype, device = z.dtype, z.device
    # examples last throughout: softmax over a short last dimension is many times slower on the CPU
    inputs = torch.cat([z, z.new_ones(n, 1)], dim=1)  # (N, D + 1): the bias as a constant input
    inputs_t = inputs.T.contiguous()  # (D + 1, N)
    onehot = F.one_hot(y, c).to(dtype).T  # (C, N)
    penalty = torch.tensor(grid, dtype=dtype, device=device)[:, None, None].repeat(1, 1, d + 1)  # (K, 1, D + 1)
    penalty[..., -1] = 0.0  # the bias is unpenalised
    shared_shifts = torch.kron(  # (P, P) projector onto "add one vector to every row of theta"
        torch.full((c, c), 1.0 / c, dtype=dtype, device=device), torch.eye(d + 1, dtype=dtype, device=device)
    )
    identity = torch.eye(size, dtype=dtype, device=device)
    roundoff = 16 * torch.finfo(dtype).eps  # relative loss changes this small are rounding, not increases

    def objective(theta: Tensor) -> tuple[Tensor, Tensor]:
        log_p = (theta @ inputs_t).log_softmax(dim=1)  # (K, C, N)
        return -(log_p * onehot).sum((1, 2)) / n + 0.5 * (penalty * theta.square()).sum((1, 2)), log_p

    theta = torch.cat([weight, bias[:, None]], dim=1).expand(k, c, d + 1)  # (K, C, D + 1): one start for all
    loss, log_p = objective(theta)
    stalled = torch.zeros(k, dtype=torch.bool, device=device)
    for _ in range(max_iter):
        p = log_p.exp()
        grad = (p - onehot) @ inputs / n + penalty * theta  # (K, C, D + 1)
        running = (grad.flatten(1).abs().amax(dim=1) > tolerance_grad) & ~stalled
        if not running.any():
            break
        # Hessian (1/n) Σ_i (diag p_i − p_i p_iᵀ) ⊗ u_i u_iᵀ + diag(penalty), indexed (c, a), (c', b): (K, P, P)
        scaled = (p[:, :, None, :] * inputs_t).flatten(1, 2)  # (K, P, N): p_ic u_ia
        hessian = -(scaled @ scaled.transpose(1, 2))
        blocks = (scaled @ inputs).view(k, c, d + 1, d + 1)  # (K, C, D + 1, D + 1): Σ_i p_ic u_i u_iᵀ
        hessian.view(k, c, d + 1, c, d + 1).diagonal(dim1=1, dim2=3).add_(blocks.permute(0, 2, 3, 1))
        hessian = hessian / n + torch.diag_embed(penalty.expand(k, c, d + 1).flatten(1)) + shared_shifts
        factor, info = torch.linalg.cholesky_ex(hessian)
        if bool((info != 0).any()):  # singular beyond the shared shifts (l2 = 0 on degenerate data)
            ridge = torch.where(info != 0, roundoff**0.5 * hessian.diagonal(dim1=1, dim2=2).mean(dim=1), 0.0)
            factor, info = torch.linalg.cholesky_ex(hessian + ridge[:, None, None] * identity)  # still descends
            stalled |= info != 0
            running &= info == 0
        step = -torch.cholesky_solve(grad.flatten(1)[..., None], factor).view(k, c, d + 1)
        step = torch.where(running[:, None, None], step, 0.0)
        slope = (grad * step).sum((1, 2))
        t = torch.ones(k, dtype=dtype, device=device)
        for _ in range(_MAX_HALVINGS):
            trial = theta + t[:, None, None] * step
            trial_loss, trial_log_p = objective(trial)
            decreased = trial_loss <= loss + 1e-4 * t * slope + roundoff * loss.abs()
            if decreased.all():
                break
            t = torch.where(decreased, t, t / 2)
        stalled |= ~decreased  # no decrease along a descent direction: as converged as the dtype allows
        theta = torch.where(decreased[:, None, None], trial, theta)
        loss = torch.where(decreased, trial_loss, loss)
        log_p = torch.where(decreased[:, None, None], trial_log_p, log_p)
    return [(solution[:, :-1].contiguous(), solution[:, -1].contiguous()) for solution in theta]
