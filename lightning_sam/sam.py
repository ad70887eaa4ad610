"""Sharpness-Aware Minimization as a wrapper around any torch optimizer.

SAM (Foret et al., arXiv 2010.01412, eq. 2): from the gradient ``g`` at the real parameters ``θ``, move to the
phantom point ``θ̃ = θ + ε`` with ``ε = ρ g / (‖g‖₂ + eps)``, take the gradient there, and apply it to ``θ`` with the
base optimizer. ASAM (Kwon et al., arXiv 2102.11600, eq. 9): ``ε = ρ T² g / ‖T g‖`` with ``T = |θ| + η`` on weight
tensors (``ndim > 1``) and ``T = 1`` on biases and norm layers (both computed by
:func:`~lightning_sam.functional.perturbation`). LSAM (docs/method.md section 3) perturbs only the head: pass the
head's parameters as ``perturbed_params``.

The three moves are separate, named steps: :meth:`SAM.ascend` (to the phantom point), :meth:`SAM.restore` (back to
the real point, bit for bit) and :meth:`SAM.step` (the base optimizer's update, refused at the phantom point).
:meth:`SAM.phantom_point` pairs the first two so that an exception in between never leaves the phantom weights in
place.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import torch
from torch import Tensor
from torch.optim import Optimizer

from lightning_sam.functional.perturbation import is_dtensor, perturbation, perturbed_point

if TYPE_CHECKING:
    from torch.distributed.tensor import DTensor


class Ascent(NamedTuple):
    """What one ascent did: the norm of the (scaled, for ASAM) gradient, and of the perturbation ``ε``."""

    grad_norm: Tensor
    perturbation_norm: Tensor


class SAM(Optimizer):
    """SAM / ASAM / LSAM around ``base_optimizer``, sharing its ``param_groups`` and ``state``.

    Because the groups are shared, LR schedulers built on this optimizer drive the base optimizer, and
    ``state_dict`` / ``load_state_dict`` are the base optimizer's. The phantom point is written into one extra copy
    of the perturbed parameters, allocated at the first ascent and reused (not saved in checkpoints).

    Args:
        base_optimizer: the optimizer that makes the update (SGD with momentum by default in this project).
        rho: radius ``ρ >= 0`` of the perturbation; ``0`` makes every step exactly a base step.
        adaptive: ASAM's scale-invariant perturbation instead of SAM's.
        eta: ASAM's ``η`` in ``T = |θ| + η``.
        perturbed_params: the parameters to perturb (LSAM: the head's); all of the optimizer's by default.
        eps: added to the gradient norm, so that a zero gradient gives a zero perturbation rather than NaN.

    Example:
        >>> model = torch.nn.Linear(2, 1)
        >>> sam = SAM(torch.optim.SGD(model.parameters(), lr=0.1), rho=0.05)
        >>> model(torch.ones(1, 2)).sum().backward()
        >>> with sam.phantom_point() as ascent:
        ...     sam.zero_grad()
        ...     model(torch.ones(1, 2)).sum().backward()
        >>> round(ascent.perturbation_norm.item(), 6)
        0.05
        >>> sam.step()
    """

    def __init__(
        self,
        base_optimizer: Optimizer,
        rho: float = 0.05,
        adaptive: bool = False,
        eta: float = 0.01,
        perturbed_params: Iterable[Tensor] | None = None,
        eps: float = 1e-12,
    ) -> None:
        if not isinstance(base_optimizer, Optimizer):
            raise TypeError(f"base_optimizer must be a torch.optim.Optimizer, got {type(base_optimizer).__name__}")
        if not rho >= 0:  # also rejects NaN
            raise ValueError(f"rho must be >= 0, got {rho}")
        if not eta >= 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        self.rho = float(rho)
        self.adaptive = adaptive
        self.eta = float(eta)
        self.eps = float(eps)
        super().__init__(base_optimizer.param_groups, base_optimizer.defaults)
        self.base_optimizer = base_optimizer
        # share, not copy: schedulers and checkpoints see one set of groups and one state
        self.param_groups = base_optimizer.param_groups
        self.state = base_optimizer.state
        all_params = {id(p) for group in self.param_groups for p in group["params"]}
        self._perturbed = None if perturbed_params is None else list(perturbed_params)
        if self._perturbed is not None and not all(id(p) in all_params for p in self._perturbed):
            raise ValueError("perturbed_params must be parameters of base_optimizer")
        self._real: dict[Tensor, Tensor] = {}  # parameter -> its tensor at the real point, while at the phantom
        self._real_shards: dict[Tensor, Tensor] = {}  # sharded parameter -> a copy of its shard at the real point
        self._phantom: dict[Tensor, Tensor] = {}  # parameter -> the tensor its phantom point is written into
        self._ascended = False  # since the last step: a base step without an ascent is plain SGD, warned about once
        self._warned = False

    @property
    def at_phantom_point(self) -> bool:
        """Whether the parameters currently hold the phantom point ``θ + ε``."""
        return bool(self._real or self._real_shards)

    def perturbed_params(self) -> list[Tensor]:
        """The parameters that :meth:`ascend` moves."""
        if self._perturbed is not None:
            return self._perturbed
        return [p for group in self.param_groups for p in group["params"]]

    @torch.no_grad()
    def ascend(self) -> Ascent:
        """Moves the perturbed parameters from ``θ`` to ``θ + ε``, with ``ε`` from their current ``.grad``.

        ``ε`` is :func:`~lightning_sam.functional.perturbation`'s, computed without a host sync. A non-finite
        gradient norm (an fp16 overflow, say) gives a zero scale: the returned ``grad_norm`` is non-finite and
        ``perturbation_norm`` is 0, so the caller can tell. For plain tensors the phantom point is then ``θ`` where
        the gradient is finite and NaN where it is not (``0 · ∞``, see
        :func:`~lightning_sam.functional.perturbed_point`), so that step becomes a non-finite step, caught wherever
        those are; sharded parameters (DTensors) add ``ε = 0`` and stay at ``θ``. ``θ`` itself is never written, and
        :meth:`restore` gives it back.
        """
        if self.at_phantom_point:
            raise RuntimeError("SAM.ascend() called at the phantom point: call restore() first")
        self._ascended = True
        params = [p for p in self.perturbed_params() if p.grad is not None]
        if not params:
            zero = torch.zeros(())
            return Ascent(zero, zero)
        grads = [p.grad for p in params if p.grad is not None]  # every one: params were chosen by their grad
        if any(map(is_dtensor, params)):
            step = perturbation(params, grads, self.rho, self.adaptive, self.eta, self.eps)
            self._ascend_sharded(params, step.epsilon)
            return Ascent(step.grad_norm, step.norm)
        # θ + ε written, in one pass, into one tensor per parameter kept from step to step (fresh memory each step
        # cost a tenth of an SGD step on ResNet-18 on the CPU); the parameters point at them and keep θ aside
        # untouched, so the restore is a pointer swap, exact and free (no copy of θ is ever made)
        phantom = self._phantom_tensors(params)
        norms = perturbed_point(params, grads, self.rho, phantom, self.adaptive, self.eta, self.eps)
        for p, value in zip(params, phantom, strict=True):
            self._real[p] = p.data
            p.data = value
        return Ascent(norms.grad_norm, norms.norm)

    def _phantom_tensors(self, params: list[Tensor]) -> list[Tensor]:
        """One tensor per parameter to hold its phantom point, allocated once (again if the parameter changed)."""
        tensors = []
        for p in params:
            held = self._phantom.get(p)
            if held is None or held.shape != p.shape or held.dtype != p.dtype or held.device != p.device:
                held = self._phantom[p] = torch.empty_like(p.data)
            tensors.append(held)
        return tensors

    def _ascend_sharded(self, params: list[Tensor], epsilon: list[Tensor]) -> None:
        """θ + ε where some parameters are DTensors (FSDP2): those move in place, from a copy of their shard.

        FSDP2 gathers a parameter from its shard's own storage, so a shard pointing at a new tensor would be ignored
        (the phantom forward would run at θ, silently): the shard is kept aside by copy and updated in place.
        """
        plain = [(p, e) for p, e in zip(params, epsilon, strict=True) if not is_dtensor(p)]
        for p, e in plain:
            self._real[p] = p.data
            p.data = p.data + e
        shards = [cast("DTensor", p).to_local() for p in params if is_dtensor(p)]
        steps = [cast("DTensor", e).to_local() for p, e in zip(params, epsilon, strict=True) if is_dtensor(p)]
        self._real_shards.update(zip([p for p in params if is_dtensor(p)], [s.clone() for s in shards], strict=True))
        torch._foreach_add_(shards, steps)

    @torch.no_grad()
    def restore(self) -> None:
        """Puts the real parameters ``θ`` back, bit for bit (a no-op at the real point)."""
        for p, real in self._real.items():
            p.data = real
        self._real.clear()
        for p, shard in self._real_shards.items():
            cast("DTensor", p).to_local().copy_(shard)
        self._real_shards.clear()

    @contextmanager
    def phantom_point(self) -> Iterator[Ascent]:
        """Ascends on entry and restores on exit, also when the block raises."""
        ascent = self.ascend()
        try:
            yield ascent
        finally:
            self.restore()

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """The base optimizer's update of the real parameters; with a closure, the whole SAM step.

        Without a closure, the update uses the gradients the parameters now hold. With a closure that zeroes the
        gradients, computes the loss and backpropagates it (the convention of torch's ``LBFGS``), the closure runs
        at ``θ``, :meth:`ascend` moves to ``θ + ε``, the closure runs again there, :meth:`restore` puts ``θ`` back
        and the base optimizer applies the gradient from ``θ + ε``. Returns the loss at ``θ``.

        A closure that returns ``None`` computed no loss to ascend from (Lightning's manual-optimization closure,
        which only runs its hooks, is such a one): it runs once, and the base step uses the gradients as they are.

        Example:
            >>> model = torch.nn.Linear(2, 1)
            >>> sam = SAM(torch.optim.SGD(model.parameters(), lr=0.1), rho=0.05)
            >>> def closure():
            ...     sam.zero_grad()
            ...     loss = model(torch.ones(1, 2)).sum()
            ...     loss.backward()
            ...     return loss
            >>> loss = sam.step(closure)
            >>> sam.at_phantom_point
            False
        """
        if self.at_phantom_point:
            raise RuntimeError("SAM.step() called at the phantom point: restore() the real parameters first")
        if closure is None:
            return self._base_step()
        with torch.enable_grad():  # step() may run under no_grad, as torch optimizers allow
            loss = closure()  # the gradient at θ
            if loss is None:
                return self._base_step()
            with self.phantom_point():
                closure()  # the gradient at θ + ε
        self._base_step()
        return loss

    def _base_step(self) -> Any:
        if not self._ascended and self.rho > 0 and not self._warned:
            # e.g. SAM returned to Lightning under automatic optimization with 16-mixed: the GradScaler calls step()
            # without a closure, and every step would silently be the base optimizer's
            warnings.warn(
                "SAM.step() took a base step without an ascent to the phantom point: this is the base optimizer, not "
                "SAM. Pass step() a closure that computes and backpropagates the loss, ascend first (phantom_point()), "
                "or, in a Lightning module with automatic optimization, use lightning_sam.callbacks.SharpnessAware.",
                stacklevel=3,
            )
            self._warned = True
        self._ascended = False
        return self.base_optimizer.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        """The base optimizer's ``zero_grad``."""
        self.base_optimizer.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Adds the group to the base optimizer (and so to the shared groups)."""
        if not hasattr(self, "base_optimizer"):  # called by Optimizer.__init__ on the shared groups
            return super().add_param_group(param_group)
        self.base_optimizer.add_param_group(param_group)

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state: SAM itself keeps none between steps."""
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads the base optimizer's state and shares its new containers."""
        self.base_optimizer.load_state_dict(state_dict)
        # load_state_dict replaces the base optimizer's containers: share the new ones
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state

    def __repr__(self) -> str:
        kind = "ASAM" if self.adaptive else "SAM"
        subset = "" if self._perturbed is None else f", {len(self._perturbed)} perturbed tensors"
        return f"{kind}(rho={self.rho}{subset}, base={self.base_optimizer!r})"
