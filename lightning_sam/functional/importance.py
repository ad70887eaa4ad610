"""Per-example importance weights at the real and the phantom point (docs/method.md sections 3 and 4).

The gradient of the cross-entropy with respect to the logits has size ``λ_i = 1 − softmax(z_i)[y_i]``: SGD's update
weights example ``i`` by ``λ_i``, SAM's by the same quantity ``λ̃_i`` at the phantom point ``θ̃ = θ + ε``,
``ε`` from :func:`~lightning_sam.functional.perturbation` of the batch-mean loss gradient over the perturbed
parameters (all of them for SAM and ASAM; the head's weight, and optionally its bias, for LSAM). The phantom point
is built functionally (``torch.func.functional_call``): the module's parameters, gradients and buffers stay untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from lightning_sam.functional.perturbation import perturbation


def importance_weights(logits: Tensor, y: Tensor) -> Tensor:
    """``(N,)`` importance weights ``λ_i = 1 − softmax(z_i)[y_i]`` of ``(N, K)`` logits, in float64.

    Computed as ``Σ_{k≠y} softmax(z)_k = exp(logsumexp_{k≠y} z − logsumexp z)``: ``1 − p`` in float32 is exactly 0
    once ``p`` rounds to 1 (margins above ~17), which would make every well-fit example's weight, and so the Gini
    coefficient of a fitted model, meaningless. This form keeps relative sizes down to margins of ~700.

    Example:
        >>> importance_weights(torch.tensor([[0.0, 0.0], [2.0, -2.0]]), torch.tensor([1, 0])).float().round(decimals=4)
        tensor([0.5000, 0.0180])
        >>> importance_weights(torch.tensor([[40.0, 0.0]]), torch.tensor([0])).item() > 0
        True
    """
    if logits.ndim != 2 or y.shape != logits.shape[:1]:
        raise ValueError(f"need (N, K) logits and (N,) labels, got {tuple(logits.shape)} and {tuple(y.shape)}")
    z = logits.double()
    others = z.scatter(1, y.long()[:, None], float("-inf"))
    return torch.exp(torch.logsumexp(others, dim=1) - torch.logsumexp(z, dim=1))


def head_gradient(representation: Tensor, logits: Tensor, y: Tensor, bias: bool = False) -> list[Tensor]:
    """``∇_W L`` (and ``∇_b L``) of the mean cross-entropy of a linear head ``z = W Φ + b``, in closed form.

    With ``r = (softmax(z) − onehot(y)) / B``: ``∇_W L = rᵀ Φ`` and ``∇_b L = Σ_i r_i``. One matmul on the forward's
    logits: no backward pass, and no autograd graph kept alive for it. Not differentiable (inputs are detached).

    Args:
        representation: ``(B, D)`` head inputs ``Φ(x)``.
        logits: ``(B, K)`` head outputs ``z`` for them.
        y: ``(B,)`` labels.
        bias: also return the bias gradient.

    Example:
        >>> grad_w, grad_b = head_gradient(torch.eye(2), torch.zeros(2, 2), torch.tensor([0, 1]), bias=True)
        >>> grad_w.tolist(), grad_b.tolist()  # a step along −∇ raises each example's own logit
        ([[-0.25, 0.25], [0.25, -0.25]], [0.0, 0.0])
    """
    residual = logits.detach().softmax(dim=1)
    # − onehot(y) in place: one scatter, where F.one_hot would check the labels' range on the host
    residual.scatter_(1, y[:, None] if y.dtype == torch.long else y.long()[:, None], -1.0, reduce="add")
    residual.div_(len(y))
    grads = [torch.mm(residual.t(), representation.detach())]
    if bias:
        grads.append(residual.sum(dim=0))
    return grads


def head_phantom(
    representation: Tensor,
    y: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    rho: float,
    head_bias: bool = False,
    adaptive: bool = False,
    eta: float = 0.01,
    eps: float = 1e-12,
) -> tuple[Tensor, Tensor | None]:
    """LSAM's phantom head in closed form: ``W̃ = W + ε_W`` (and ``b̃ = b + ε_b`` with ``head_bias``).

    The head gradient is :func:`head_gradient` (closed form, as LSAM's training step takes it); ``ε`` is
    :func:`~lightning_sam.functional.perturbation` of the perturbed tensors (the paper's ``w̃ = w + ρ ∇_w L / ‖∇_w L‖``
    on the weight alone by default).

    Args:
        representation: ``(B, D)`` head inputs ``Φ(x)``.
        y: ``(B,)`` labels.
        weight: ``(K, D)`` head weight ``W``.
        bias: ``(K,)`` head bias ``b``, or ``None`` for a head without one.
        rho: the perturbation radius.
        head_bias: perturb the bias too (its gradient then shares the norm with the weight's).
        adaptive: ASAM's scale-invariant perturbation.
        eta: ASAM's ``η``.
        eps: added to the gradient norm (as in :class:`~lightning_sam.sam.SAM`).

    Example:
        >>> w_tilde, b_tilde = head_phantom(torch.eye(2), torch.tensor([0, 1]), torch.zeros(2, 2), None, rho=1.0)
        >>> w_tilde.tolist(), b_tilde  # moved by ρ = 1 against the margin of both examples
        ([[-0.5, 0.5], [0.5, -0.5]], None)
    """
    params = [weight] if bias is None or not head_bias else [weight, bias]
    grads = head_gradient(representation, F.linear(representation, weight, bias), y, bias=len(params) > 1)
    epsilon = perturbation(params, grads, rho, adaptive=adaptive, eta=eta, eps=eps).epsilon
    w_tilde = weight + epsilon[0]
    b_tilde = bias + epsilon[1] if bias is not None and len(epsilon) > 1 else bias
    return w_tilde, b_tilde


class PhantomPoint(NamedTuple):
    """One batch seen at the real and at the phantom parameters."""

    real_logits: Tensor  # (B, K) at θ
    phantom_logits: Tensor  # (B, K) at θ̃
    parameters: dict[str, Tensor]  # name -> θ̃ for every perturbed parameter


def phantom_point(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    rho: float,
    parameter_names: Sequence[str],
    adaptive: bool = False,
    eta: float = 0.01,
    eps: float = 1e-12,
) -> PhantomPoint:
    """Takes the SAM ascent step on the named parameters of ``model`` for one batch, without modifying ``model``.

    ``model(x)`` must return logits; the loss is their mean cross-entropy. The ascent gradient comes from
    ``torch.autograd.grad`` (no ``.grad`` is written) and the phantom forward from ``functional_call`` with the
    perturbed parameters swapped in. Run the model in the mode you want measured (``eval()`` keeps BatchNorm
    statistics and dropout out of it).

    Args:
        model: the classifier.
        x: the batch input.
        y: ``(B,)`` labels.
        rho: the perturbation radius.
        parameter_names: names (as in ``model.named_parameters()``) of the parameters to perturb.
        adaptive: ASAM's scale-invariant perturbation.
        eta: ASAM's ``η``.
        eps: added to the gradient norm (as in :class:`~lightning_sam.sam.SAM`).

    Example:
        >>> head = nn.Linear(2, 2)
        >>> point = phantom_point(head, torch.eye(2), torch.tensor([0, 1]), 0.5, ["weight", "bias"])
        >>> w_tilde, b_tilde = head_phantom(torch.eye(2), torch.tensor([0, 1]), head.weight, head.bias, 0.5, True)
        >>> torch.allclose(point.parameters["weight"], w_tilde), head.weight.grad is None
        (True, True)
    """
    named = dict(model.named_parameters())
    missing = [n for n in parameter_names if n not in named]
    if missing:
        raise ValueError(f"parameter_names not in the model: {missing}")
    params = [named[n] for n in parameter_names]
    with torch.enable_grad():
        real_logits = model(x)
        loss = F.cross_entropy(real_logits, y)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    grads = tuple(torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True))
    epsilon = perturbation(params, grads, rho, adaptive=adaptive, eta=eta, eps=eps).epsilon
    phantom = {n: (p + e).detach() for n, p, e in zip(parameter_names, params, epsilon, strict=True)}
    with torch.no_grad():
        phantom_logits = functional_call(model, phantom, (x,))
    return PhantomPoint(real_logits.detach(), phantom_logits, phantom)
