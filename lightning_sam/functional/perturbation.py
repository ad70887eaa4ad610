"""The SAM perturbation ``ε``, written once and used everywhere (docs/method.md section 3).

SAM (Foret et al., arXiv 2010.01412, eq. 2): ``ε = ρ g / (‖g‖₂ + eps)``. ASAM (Kwon et al., arXiv 2102.11600,
eq. 9): ``ε = ρ T² g / (‖T g‖₂ + eps)`` with ``T = |θ| + η`` on weight tensors (``ndim > 1``) and ``T = 1`` on biases
and norm layers. LSAM is SAM on the head's parameters only: pass just those. The callbacks' phantom point and the
closed-form :func:`~lightning_sam.functional.head_phantom` call :func:`perturbation`, and
:meth:`lightning_sam.SAM.ascend` calls :func:`perturbed_point`, which writes ``θ + ε`` in one pass from the same
direction and scale: training and measurement can never disagree on which point is the phantom (for a finite
gradient; a non-finite one has no phantom point to measure).

Sharded parameters (DTensors, as FSDP2's ``fully_shard`` makes them) get the same ``ε``: every process computes it
on its own shards, from norms summed over all shards with one all-reduce (ASAM's two norms share it; a shard
replicated over a mesh dimension is counted once), and plain tensors next to them count as replicated.

Everything stays on the device: the scale ``ρ / (‖·‖ + eps)`` is a 0-d tensor, and a non-finite norm (an fp16
overflow, a NaN loss) gives ``ε = 0`` through a zero scale instead of a Python branch, so no host sync happens.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Literal, NamedTuple, cast

import torch
from torch import Tensor

try:
    from torch.distributed.tensor import DTensor

    _SHARDABLE = True
except ImportError:  # torch < 2.4, or built without distributed: nothing is sharded
    _SHARDABLE = False

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


class PerturbationNorms(NamedTuple):
    """The norm of the (for ASAM: scaled) gradient and ``‖ε‖`` (0-d tensors), for :func:`perturbed_point`."""

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
        ``ε`` per parameter (for a DTensor parameter a DTensor, this process's shard of ``ε``), the gradient norm
        (non-finite when the gradient is) and ``‖ε‖``. A non-finite gradient gives ``ε = 0``.

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
    layouts = _layouts(grads)
    if layouts is None:  # plain tensors: no collective, the norms as they always were
        if any(map(is_dtensor, params)):
            raise ValueError("sharded parameters need sharded gradients (DTensors of the same layout)")
        return _epsilon(_scaled_direction(params, grads, rho, adaptive, eta, eps, _plain_norms))
    if any(_placements(p) != _placements(g) for p, g in zip(params, grads, strict=True)):
        raise ValueError("a sharded parameter needs its gradient sharded the same way (a DTensor, same placements)")
    # this process's shards; ε on them is this process's shard of the whole ε
    step = _epsilon(_scaled_direction(
        [_local(p) for p in params], [_local(g) for g in grads], rho, adaptive, eta, eps,
        partial(_sharded_norms, layouts=layouts),
    ))  # fmt: skip
    epsilon = [_like(e, p) for e, p in zip(step.epsilon, params, strict=True)]
    return Perturbation(epsilon, step.grad_norm, step.norm)


def perturbed_point(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    rho: float,
    out: Sequence[Tensor],
    adaptive: bool = False,
    eta: float = 0.01,
    eps: float = 1e-12,
) -> PerturbationNorms:
    """Writes the phantom point ``θ + ε`` of plain-tensor ``params`` into ``out``, in one pass over them.

    The training step's fast path (:meth:`lightning_sam.SAM.ascend`): ``ε`` is :func:`perturbation`'s, but never
    materialised. On ResNet-18 on one CPU thread this is 13 ms where ``ε`` and then ``θ + ε`` took 25 ms (a twentieth of
    an SGD step); on the CPU, filling fresh memory costs more than the arithmetic, hence ``out``, kept by the caller.
    fp16 parameters are computed in float32 and rounded (a temporary per tensor): ``addcmul`` would round the scale to
    fp16 first, where ``ρ / ‖g‖`` overflows for a small gradient.

    A non-finite gradient norm gives a zero scale, as in :func:`perturbation`, but ``0 · ∞`` is NaN: the phantom
    point is ``θ`` where the gradient is finite and NaN where it is not, so the loss and gradient there are non-finite
    and the step is a non-finite step, caught wherever those are (the device guard, the GradScaler,
    ``nonfinite="raise"``). Zeroing those entries would take one more pass every step; ``θ`` itself is only read.

    Returns:
        The gradient norm and ``‖ε‖`` (0 for a non-finite gradient); the point is in ``out``.

    Example:
        >>> point = [torch.empty(2)]
        >>> perturbed_point([torch.ones(2)], [torch.tensor([3.0, 4.0])], rho=0.5, out=point).norm.item()
        0.5
        >>> point[0].tolist()
        [1.2999999523162842, 1.399999976158142]
    """
    if len(params) != len(grads) or len(params) != len(out):
        raise ValueError(f"need one gradient and one output per parameter, got {len(params)} parameters, "
                         f"{len(grads)} gradients and {len(out)} outputs")  # fmt: skip
    if any(map(is_dtensor, [*params, *grads])):
        raise ValueError("perturbed_point takes plain tensors: for sharded parameters, add perturbation()'s ε")
    if not params:
        zero = torch.zeros(())
        return PerturbationNorms(zero, zero)
    direction, scale, grad_norm, norm = _scaled_direction(params, grads, rho, adaptive, eta, eps, _plain_norms)
    for p, d, o in zip(params, direction, out, strict=True):
        if o.dtype == torch.float16:  # θ + s g in float32, then rounded: s itself may not fit in fp16 (a 0-d CUDA
            o.copy_(d.float().mul_(scale).add_(p.detach()))  # tensor in an fp16 op would be cast to fp16 first)
        else:
            torch.addcmul(p.detach(), d, scale, out=o)  # one kernel per tensor: read θ and g, write θ + s g
    return PerturbationNorms(grad_norm, norm)


class _ScaledDirection(NamedTuple):
    """``ε = scale · direction``: the direction (``g``, or ASAM's ``T² g``), the scale, and the two norms."""

    direction: list[Tensor]
    scale: Tensor
    grad_norm: Tensor
    norm: Tensor  # ‖ε‖, 0 where the scale is


def _scaled_direction(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    rho: float,
    adaptive: bool,
    eta: float,
    eps: float,
    norms: Callable[..., list[Tensor]],
) -> _ScaledDirection:
    """``ε`` of plain tensors as a direction and a 0-d scale; ``norms(*lists)`` gives the global norm of each list."""
    grads = [g.detach() if g.requires_grad else g for g in grads]  # every detach is a dispatch: only where needed
    direction: list[Tensor]
    if adaptive:
        # T = |θ| + η on weights; biases and norm-layer parameters (ndim <= 1) are not rescaled
        scales = [p.detach().abs().add_(eta) if p.ndim > 1 else torch.ones_like(p) for p in params]
        scaled = torch._foreach_mul(grads, scales)  # T g
        direction = list(torch._foreach_mul(scaled, scales))  # T² g
        grad_norm, direction_norm = norms(scaled, direction)
    else:
        (grad_norm,) = norms(grads)
        direction_norm = grad_norm
        direction = grads
    # a 0-d device tensor: no .item(), no branch on its value. As ‖·‖ + eps > 0, the quotient is 0 for an infinite
    # norm and NaN for a NaN one, which becomes 0: a non-finite norm gives a zero scale. Few kernels on purpose: on a
    # small model the step is bound by their number, not their size (isfinite + where took seven)
    scale = torch.nan_to_num_(rho / (grad_norm + eps), nan=0.0)
    norm = (direction_norm * scale).masked_fill_(scale == 0, 0.0)  # inf · 0 is NaN: ‖ε‖ = 0 where the scale is
    return _ScaledDirection(direction, scale, grad_norm, norm)


def _epsilon(step: _ScaledDirection) -> Perturbation:
    """``ε = scale · direction``, zero wherever the scale is (a non-finite gradient)."""
    epsilon = list(torch._foreach_mul(step.direction, step.scale))
    # a non-finite gradient times a zero scale is still NaN (inf · 0): zero ε in place wherever the scale is 0 (a
    # finite direction times 0 is 0 already, so ρ = 0 loses nothing). A 0-d mask that is False writes nothing: half
    # the time of a pass that rewrites ε, and masking the direction first, with torch.where, cost three passes
    zero_scale = step.scale == 0
    for e in epsilon:
        e.masked_fill_(zero_scale, 0.0)
    return Perturbation(epsilon, step.grad_norm, step.norm)


def global_norm(tensors: Sequence[Tensor]) -> Tensor:
    """The 2-norm of all tensors taken together, as if concatenated (a 0-d tensor, in float32 at least).

    Sharded tensors (DTensors) count with all their shards, and plain tensors next to them as replicated.

    Example:
        >>> global_norm([torch.tensor([3.0]), torch.tensor([[4.0]])]).item()
        5.0
    """
    layouts = _layouts(tensors)
    if layouts is not None:
        return _sharded_norms([_local(t) for t in tensors], layouts=layouts)[0]
    norms = torch._foreach_norm(list(tensors), 2, dtype=_norm_dtype(tensors))
    if len(norms) == 1:
        return norms[0]
    return torch.linalg.vector_norm(torch.stack(norms))


def _norm_dtype(tensors: Sequence[Tensor]) -> torch.dtype:
    """float32, or float64 where a tensor is: norms of fp16 tensors are taken in float32 (they overflow past 65504)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _plain_norms(*lists: Sequence[Tensor]) -> list[Tensor]:
    return [global_norm(tensors) for tensors in lists]


# --- sharded tensors ---------------------------------------------------------------------------------------------


class _Layout(NamedTuple):
    """How a DTensor is spread: its device mesh and the mesh dimensions it is sharded over (not replicated on)."""

    mesh: Hashable
    shard_dims: tuple[int, ...]


def is_dtensor(t: Tensor) -> bool:
    """Whether ``t`` is a DTensor (a parameter or gradient sharded by FSDP2, say): each process holds a shard."""
    return _SHARDABLE and isinstance(t, DTensor)


def _placements(t: Tensor) -> object:
    """A DTensor's placements, ``None`` for a plain tensor."""
    return cast(DTensor, t).placements if is_dtensor(t) else None


def _layouts(tensors: Sequence[Tensor]) -> list[_Layout | None] | None:
    """Each tensor's layout (``None``: a plain tensor), or ``None`` when no tensor is sharded."""
    if not any(map(is_dtensor, tensors)):
        return None
    layouts: list[_Layout | None] = []
    for t in tensors:
        if not is_dtensor(t):
            layouts.append(None)
            continue
        placements = cast(DTensor, t).placements
        if any(p.is_partial() for p in placements):
            raise ValueError(
                f"a DTensor with a partial placement ({placements}) holds unreduced sums: reduce it before taking "
                "a norm or perturbation of it"
            )
        dims = tuple(i for i, p in enumerate(placements) if p.is_shard())
        layouts.append(_Layout(cast(DTensor, t).device_mesh, dims))
    return layouts


def _sharded_norms(*lists: Sequence[Tensor], layouts: Sequence[_Layout | None]) -> list[Tensor]:
    """Global norms of lists of local shards (one layout per position), with one all-reduce per kind of layout.

    Under FSDP2 every parameter is sharded over the same mesh dimension: one all-reduce in all, of one number per
    list. Shards of a dimension a tensor is replicated over, and plain tensors, are counted once.
    """
    groups: dict[_Layout | None, list[int]] = {}
    for i, layout in enumerate(layouts):
        groups.setdefault(layout, []).append(i)
    squares = []
    for layout, positions in groups.items():
        # (len(lists),) this process's squared norms
        square = torch.stack([_squared_norm([tensors[i] for i in positions]) for tensors in lists])
        for dim in () if layout is None else layout.shard_dims:
            torch.distributed.all_reduce(square, group=layout.mesh.get_group(dim))  # type: ignore[union-attr]
        squares.append(square)
    return list(torch.stack(squares).sum(dim=0).sqrt().unbind())


def _squared_norm(tensors: list[Tensor]) -> Tensor:
    return torch.stack(torch._foreach_norm(tensors, 2, dtype=_norm_dtype(tensors))).square().sum()


def _local(t: Tensor) -> Tensor:
    """A DTensor's shard on this process (the tensor itself, no copy), or a plain tensor as it is."""
    return cast(DTensor, t.detach()).to_local() if is_dtensor(t) else t


def _like(local: Tensor, reference: Tensor) -> Tensor:
    """``local`` as this process's shard of a DTensor laid out as ``reference`` (plain when the reference is)."""
    if not is_dtensor(reference):
        return local
    ref = cast(DTensor, reference)
    return DTensor.from_local(
        local, ref.device_mesh, ref.placements, run_check=False, shape=ref.shape, stride=ref.stride()
    )
