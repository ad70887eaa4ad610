"""The SAM perturbation ``ε``, written once and used everywhere (docs/method.md section 3).

SAM (Foret et al., arXiv 2010.01412, eq. 2): ``ε = ρ g / (‖g‖₂ + eps)``. ASAM (Kwon et al., arXiv 2102.11600,
eq. 9): ``ε = ρ T² g / (‖T g‖₂ + eps)`` with ``T = |θ| + η`` on weight tensors (``ndim > 1``) and ``T = 1`` on biases
and norm layers. LSAM is SAM on the head's parameters only: pass just those. :meth:`lightning_sam.SAM.ascend`, the
callbacks' phantom point and the closed-form :func:`~lightning_sam.functional.head_phantom` all call
:func:`perturbation`, so training and measurement can never disagree on which point is the phantom.

Everything stays on the device: the scale ``ρ / (‖·‖ + eps)`` is a 0-d tensor, and a non-finite norm (an fp16
overflow, a NaN loss) gives ``ε = 0`` through ``torch.where`` instead of a Python branch, so no host sync happens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch import Tensor

Scope = Literal["head", "all"]


@dataclass(frozen=True)
class PerturbationSpec:
    """Which phantom point a model trains with: what training and every measurement of it must agree on.

    Args:
        rho: the radius ``ρ >= 0`` (``0``: the phantom point is the real point).
        scope: ``"all"`` parameters (SAM, ASAM), the ``"head"`` only (LSAM), or the name of a module (as in
            ``named_modules()``) whose parameters are perturbed.
        adaptive: ASAM's scale-invariant ``ε``.
        eta: ASAM's ``η``.
        head_bias: with ``scope="head"``, perturb the head's bias as well as its weight.
    """

    rho: float
    scope: Scope | str = "all"
    adaptive: bool = False
    eta: float = 0.01
    head_bias: bool = False

    def __post_init__(self) -> None:
        if not self.rho >= 0:  # also rejects NaN
            raise ValueError(f"rho must be >= 0, got {self.rho}")
        if not isinstance(self.scope, str) or not self.scope:
            raise ValueError(f"scope must be 'head', 'all' or a module name, got {self.scope!r}")
        if not self.eta >= 0:
            raise ValueError(f"eta must be >= 0, got {self.eta}")


class Perturbation(NamedTuple):
    """``ε`` for each parameter, the norm of the (for ASAM: scaled) gradient, and ``‖ε‖`` (0-d tensors)."""

    epsilon: list[Tensor]
    grad_norm: Tensor
    norm: Tensor


def perturbation(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    rho: float,
    adaptive: bool = False,
    eta: float = 0.01,
    eps: float = 1e-12,
) -> Perturbation:
    """The SAM (or ASAM) perturbation of ``params`` from their loss gradients ``grads``.

    Args:
        params: the parameters to perturb (their values are read only by ASAM).
        grads: ``∇L`` for each parameter, same shapes.
        rho: the radius ``ρ``.
        adaptive: ASAM instead of SAM.
        eta: ASAM's ``η``.
        eps: added to the norm, so that a zero gradient gives ``ε = 0`` rather than NaN.

    Returns:
        ``ε`` per parameter (new tensors), the gradient norm (non-finite when the gradient is) and ``‖ε‖``.

    Example:
        >>> eps_w, = perturbation([torch.zeros(2)], [torch.tensor([3.0, 4.0])], rho=0.5).epsilon
        >>> eps_w.tolist()
        [0.30000001192092896, 0.4000000059604645]
        >>> perturbation([torch.zeros(1)], [torch.tensor([float("nan")])], rho=0.5).epsilon[0].tolist()
        [0.0]
    """
    if len(params) != len(grads):
        raise ValueError(f"need one gradient per parameter, got {len(params)} parameters and {len(grads)} gradients")
    if not params:
        zero = torch.zeros(())
        return Perturbation([], zero, zero)
    grads = [g.detach() for g in grads]
    direction: Sequence[Tensor]
    if adaptive:
        # T = |θ| + η on weights; biases and norm-layer parameters (ndim <= 1) are not rescaled
        scales = [p.detach().abs().add_(eta) if p.ndim > 1 else torch.ones_like(p) for p in params]
        scaled = torch._foreach_mul(grads, scales)  # T g
        grad_norm = global_norm(scaled)
        direction = torch._foreach_mul(scaled, scales)  # T² g
        direction_norm = global_norm(direction)
    else:
        grad_norm = direction_norm = global_norm(grads)
        direction = grads
    finite = torch.isfinite(grad_norm)
    # a 0-d device tensor: no .item(), no branch on its value
    scale = torch.where(finite, rho / (grad_norm + eps), torch.zeros_like(grad_norm))
    epsilon = list(torch._foreach_mul(list(direction), scale))
    # a non-finite gradient times a zero scale is still NaN: zero ε in place, one pass and no copy of the gradient
    # (masking the direction first, with torch.where, cost three passes: a third of an SGD step on ResNet-18)
    not_finite = ~finite
    for e in epsilon:
        e.masked_fill_(not_finite, 0.0)
    return Perturbation(epsilon, grad_norm, torch.where(finite, direction_norm * scale, scale))


def global_norm(tensors: Sequence[Tensor]) -> Tensor:
    """The 2-norm of all tensors taken together, as if concatenated (a 0-d tensor, in float32 at least).

    Example:
        >>> global_norm([torch.tensor([3.0]), torch.tensor([[4.0]])]).item()
        5.0
    """
    norms = torch._foreach_norm(list(tensors))
    return torch.linalg.vector_norm(torch.stack([n.float() for n in norms]))
