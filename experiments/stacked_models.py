"""Many toy classifiers trained at once: every parameter of ``S`` models stacked into one ``(S, ...)`` tensor.

The toy's models (:class:`~lightning_sam.bodies.TwoBranchMLP` and a linear head) are tiny, so one model per process
leaves the CPU idle in Python overhead. Here every layer of ``S`` models runs as one batched matmul, and one training
step reproduces :class:`~lightning_sam.SAMClassifier`'s update for each model (docs/method.md section 3):

- SGD and LSAM (:func:`head_step_gradients`): one body forward; LSAM's ascent is the closed-form head gradient at
  ``θ``, ``ε`` on the head weight (and, per model, optionally its bias); the update gradient of all parameters is
  taken at ``(φ, W̃, b̃)`` on the same representation. SGD is ``ρ = 0``.
- SAM (:func:`sam_step_gradients`): ``ε`` from the gradient of all parameters (global norm per model), the update
  gradient at ``θ + ε``.
- :class:`StackedSGD`: ``torch.optim.SGD``'s momentum and weight decay, applied to every model.

``ε`` is :func:`~lightning_sam.functional.perturbation`'s, computed per model by :func:`stacked_perturbation` (that
function's fused ``_foreach`` ops have no ``vmap`` rule); a test checks both agree, and that a few steps here equal
``SAMClassifier``'s.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_sam import SAMClassifier
from lightning_sam.bodies import TwoBranchMLP

Params = dict[str, Tensor]
LAYERS = (0, 2, 4)  # the nn.Linear indices of each branch's nn.Sequential


def toy_classifier(seed: int, block_size: int, hidden: int = 64, **model_kwargs) -> SAMClassifier:
    """The ``SAMClassifier`` a run with this seed starts from (``torch.manual_seed(seed)``, then body, then head)."""
    torch.manual_seed(seed)
    return SAMClassifier(TwoBranchMLP(hidden=hidden, block_size=block_size), **model_kwargs)


def stack_parameters(models: Sequence[torch.nn.Module]) -> Params:
    """``name -> (S, ...)`` copies of the models' parameters, in ``named_parameters`` order."""
    named = [dict(m.named_parameters()) for m in models]
    return {name: torch.stack([n[name].detach() for n in named]).clone() for name in named[0]}


def branch_forward(params: Params, prefix: str, x: Tensor) -> Tensor:
    """One MLP branch of every model: ``(S, B, in)`` to ``(S, B, k)``."""
    for i in LAYERS:
        weight, bias = params[f"{prefix}.{i}.weight"], params[f"{prefix}.{i}.bias"]
        x = torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))
        if i != LAYERS[-1]:
            x = torch.relu(x)
    return x


def representation(params: Params, x: Tensor) -> Tensor:
    """``Φ(x) = [Φ_easy, Φ_hard]`` of every model, ``(S, B, 2k)`` from ``(S, B, 3)`` inputs."""
    return torch.cat(
        [branch_forward(params, "body.easy", x[..., :1]), branch_forward(params, "body.hard", x[..., 1:])], -1
    )


def head_logits(rep: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``(S, B, K)`` logits ``W Φ + b`` of ``(S, K, D)`` heads."""
    return torch.baddbmm(bias.unsqueeze(1), rep, weight.transpose(1, 2))


def mean_cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    """``(S,)`` batch-mean cross-entropy of each model."""
    return F.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(dim=1)


def stacked_perturbation(grads: Sequence[Tensor], rho: Tensor, eps: float = 1e-12) -> list[Tensor]:
    """SAM's ``ε = ρ g / (‖g‖ + eps)`` per model (``ρ``: ``(S,)``), the norm over all of a model's tensors.

    As :func:`~lightning_sam.functional.perturbation`, a non-finite norm gives ``ε = 0``.

    Example:
        >>> eps, = stacked_perturbation([torch.tensor([[3.0, 4.0], [0.0, 2.0]])], torch.tensor([0.5, 1.0]))
        >>> eps.tolist()
        [[0.30000001192092896, 0.4000000059604645], [0.0, 1.0]]
    """
    squares = sum(g.detach().double().pow(2).flatten(1).sum(1) for g in grads)
    norm = squares.sqrt().to(grads[0].dtype)
    finite = torch.isfinite(norm)
    scale = torch.where(finite, rho / (norm + eps), torch.zeros_like(norm))
    return [torch.where(_expand(finite, g), g.detach(), 0.0) * _expand(scale, g) for g in grads]


def _expand(v: Tensor, like: Tensor) -> Tensor:
    return v.view(-1, *([1] * (like.ndim - 1)))


class StepResult:
    """What one step saw at the real parameters, and the phantom head it took the update gradient at."""

    def __init__(self, loss: Tensor, logits: Tensor, phantom_weight: Tensor) -> None:
        self.loss = loss  # (S,) batch loss at θ
        self.logits = logits  # (S, B, K) at θ
        self.phantom_weight = phantom_weight  # (S, K, D) head weight at the phantom point


def head_step_gradients(
    params: Params, x: Tensor, y: Tensor, rho: Tensor, head_bias: Tensor
) -> tuple[Params, StepResult]:
    """SGD / LSAM: the update gradient of every parameter at ``(φ, W̃, b̃)``, one body forward.

    Args:
        params: ``(S, ...)`` parameters (not modified).
        x: ``(S, B, 3)`` inputs.
        y: ``(S, B)`` labels.
        rho: ``(S,)`` radii (``0``: SGD).
        head_bias: ``(S,)`` bool, whether each model's phantom also moves the head's bias.
    """
    leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
    rep = representation(leaves, x)
    weight, bias = leaves["head.weight"], leaves["head.bias"]
    logits = head_logits(rep, weight, bias)
    with torch.no_grad():
        # ∇_W L = rᵀ Φ, ∇_b L = Σ r with r = (softmax(z) − onehot(y)) / B: the head's gradient at θ, no backward
        residual = (logits.softmax(-1) - F.one_hot(y, logits.shape[-1]).to(logits.dtype)) / y.shape[1]
        grad_w = residual.transpose(1, 2) @ rep
        grad_b = residual.sum(1) * _expand(head_bias.to(residual.dtype), residual.sum(1))
        eps_w, eps_b = stacked_perturbation([grad_w, grad_b], rho)
    phantom_weight = weight + eps_w
    phantom_loss = mean_cross_entropy(head_logits(rep, phantom_weight, bias + eps_b), y)
    grads = torch.autograd.grad(phantom_loss.sum(), list(leaves.values()))
    with torch.no_grad():
        loss = mean_cross_entropy(logits, y)
    return dict(zip(leaves, grads, strict=True)), StepResult(loss, logits.detach(), phantom_weight.detach())


def sam_step_gradients(params: Params, x: Tensor, y: Tensor, rho: Tensor) -> tuple[Params, StepResult]:
    """Full SAM: ``ε`` from the gradient of all parameters (one norm per model), the update gradient at ``θ + ε``."""
    leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
    logits = head_logits(representation(leaves, x), leaves["head.weight"], leaves["head.bias"])
    loss = mean_cross_entropy(logits, y)
    ascent = torch.autograd.grad(loss.sum(), list(leaves.values()))
    epsilon = stacked_perturbation(ascent, rho)
    phantom = {n: (p + e).requires_grad_(True) for (n, p), e in zip(params.items(), epsilon, strict=True)}
    phantom_logits = head_logits(representation(phantom, x), phantom["head.weight"], phantom["head.bias"])
    grads = torch.autograd.grad(mean_cross_entropy(phantom_logits, y).sum(), list(phantom.values()))
    result = StepResult(loss.detach(), logits.detach(), phantom["head.weight"].detach())
    return dict(zip(params, grads, strict=True)), result


class StackedSGD:
    """``torch.optim.SGD(momentum, weight_decay)`` (no dampening, no Nesterov) on stacked parameters, in place."""

    def __init__(self, momentum: float = 0.9, weight_decay: float = 5e-4) -> None:
        self.momentum, self.weight_decay = momentum, weight_decay
        self.buffers: Params = {}

    @torch.no_grad()
    def step(self, params: Params, grads: Params, lr: float) -> None:
        """``θ ← θ − lr · buf`` with ``buf ← momentum · buf + (g + weight_decay · θ)`` (``buf = d`` at first)."""
        for name, p in params.items():
            d = grads[name].add(p, alpha=self.weight_decay)
            buffer = self.buffers.get(name)
            if buffer is None:
                buffer = self.buffers[name] = d.clone()
            else:
                buffer.mul_(self.momentum).add_(d)
            p.add_(buffer, alpha=-lr)


def cosine_learning_rates(lr: float, total_steps: int) -> list[float]:
    """The learning rate of each step under ``CosineAnnealingLR(T_max=total_steps)`` stepped once per step."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps))
    rates = []
    for _ in range(total_steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates
