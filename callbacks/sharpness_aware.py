"""SAM for any LightningModule with automatic optimization, as a callback (docs/method.md section 3).

SAM (Foret et al., arXiv 2010.01412, eq. 2), ASAM (Kwon et al., arXiv 2102.11600) or SAM on a subset of the
parameters (LSAM's head, or any named module), added to a Trainer without touching the module or its optimizer.
Lightning's automatic step is: ``training_step`` and backward at ``θ``, then ``on_before_optimizer_step`` (gradients
averaged by DDP's reducer and, under ``16-mixed``, unscaled), then clipping and the optimizer step. In that hook the
callback replaces the gradient at ``θ`` by the gradient at the phantom point:

1. *Ascend to the phantom point*: ``θ̃ = θ + ε`` with ``ε`` from the gradient at ``θ``, through
   :meth:`lightning_sam.SAM.phantom_point` (the same ``ε`` as the optimizer, restored bit for bit on exit).
2. *Descend from it*: the loss of the current batch at ``θ̃`` (BatchNorm running statistics frozen), its gradient
   by ``torch.autograd.grad``, averaged over devices in one flat all-reduce, written into ``.grad`` after the
   restore. On a model sharded with FSDP2 (Lightning's ``ModelParallelStrategy``) it is taken by ``backward``
   instead, whose hooks reduce-scatter it into each shard's ``.grad``. Lightning then clips and steps as usual, so
   ``global_step``, checkpoints, ``max_steps``, schedulers and clipping behave as without the callback.

Cheap variants: ``every_n_steps=k`` (the phantom pass on every k-th step only) and ``start_step`` (SAM from that
step on: late-phase SAM, Zhou et al., ICLR 2025).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.strategies import DDPStrategy, DeepSpeedStrategy, ModelParallelStrategy, SingleDeviceStrategy
from torch import Tensor, nn
from torch.optim import Optimizer
from typing_extensions import override

from lightning_sam.callbacks._batch_fields import batch_input, batch_target
from lightning_sam.callbacks._phantom import check_head
from lightning_sam.callbacks._representation import final_linear
from lightning_sam.frozen_batchnorm_stats import frozen_batchnorm_stats
from lightning_sam.functional.perturbation import PerturbationSpec, global_norm
from lightning_sam.sam import SAM
from lightning_sam.sharding import reshard


class SharpnessAware(Callback):
    """Trains any automatic-optimization LightningModule with SAM, ASAM or SAM on a subset, with any optimizer.

    ``Trainer(callbacks=[SharpnessAware(rho=0.05)])``: the module and its ``configure_optimizers`` stay unchanged.
    Each SAM step costs one extra forward and backward on the current batch; ``training_step`` is not re-run, so
    nothing is logged or counted twice. The update gradient is the gradient of ``loss`` at ``θ̃``: when
    ``training_step``'s loss is not plain cross-entropy of ``module(x)`` (label smoothing, extra terms), pass the same
    loss as ``loss``. Dropout draws new masks in the phantom pass. The module's own ``on_before_optimizer_step``
    runs after this callback's and sees the phantom gradient.

    Precision: ``32-true`` and ``bf16-mixed`` as they are; ``16-mixed`` scales the phantom loss with the Trainer's
    GradScaler and unscales its gradient, and an overflow at ``θ`` or at ``θ̃`` makes the scaler skip the step (the
    parameters stay at ``θ``). Non-finite gradients are otherwise left to the Trainer, as without the callback.

    Strategies: one device, DDP, or Lightning's ``ModelParallelStrategy`` with a module that shards itself with
    FSDP2's ``fully_shard`` in ``configure_model`` (data-parallel only; parameters the module keeps whole need their
    gradients averaged by a hook of their own, such as :func:`lightning_sam.sharding.replicate`). Under DDP the
    gradient at ``θ`` is the all-device average, and under sharding each shard's; so the perturbation is global (its
    norm over all shards) and N devices equal one device with the global batch. Sharded, the phantom gradient comes
    from a second ``backward``, and ``16-mixed`` is refused (Lightning's ``ModelParallelStrategy`` offers it
    neither). ``FSDPStrategy`` and DeepSpeed are refused: they wrap the module, which the phantom pass calls
    unwrapped. Per-device perturbation (m-sharpness) is not offered, since it needs the ascent backward without DDP's
    gradient sync, which only the module controls: use ``SAMClassifier(perturbation="local")`` or the manual pattern
    in the README.

    Also declares ``perturbation_spec``: the measurement callbacks (``ImportanceWeights``, ``LearningRateScaling``)
    measure this phantom point when the module declares none.

    Args:
        rho: radius ``ρ >= 0``; ``0`` runs no phantom pass, every step is exactly the optimizer's own.
        scope: ``"all"`` the optimizer's parameters, the ``"head"`` only (LSAM: the weight of the model's final
            ``nn.Linear``), or the name of a module whose parameters are perturbed. The update changes every
            parameter the optimizer holds.
        adaptive: ASAM's scale-invariant perturbation.
        eta: ASAM's ``η``.
        head_bias: with ``scope="head"``, perturb the head's bias too.
        every_n_steps: the phantom pass on every n-th step only; the others are plain optimizer steps.
        start_step: no phantom pass before this global step. SAM runs at steps ``s >= start_step`` with
            ``(s - start_step) % every_n_steps == 0``; ``sam/applied`` (1 or 0) is logged at every step.
        loss: ``loss(module, batch) -> Tensor``, the loss at the phantom point; default: cross-entropy of
            ``module(batch_input(batch))`` against ``batch_target(batch)``.
        batch_input: reads the model input from a batch (default ``batch[0]``).
        batch_target: reads the ``(B,)`` labels from a batch (default ``batch[1]``).
        eps: added to the gradient norm, so that a zero gradient gives ``ε = 0``.
    """

    def __init__(
        self,
        rho: float = 0.05,
        scope: Literal["all", "head"] | str = "all",
        adaptive: bool = False,
        eta: float = 0.01,
        head_bias: bool = False,
        every_n_steps: int = 1,
        start_step: int = 0,
        loss: Callable[[nn.Module, Any], Tensor] | None = None,
        batch_input: Callable[[Any], Tensor] = batch_input,
        batch_target: Callable[[Any], Tensor] = batch_target,
        eps: float = 1e-12,
    ) -> None:
        super().__init__()
        # validates rho >= 0, eta >= 0 and the scope's type
        self.perturbation_spec = PerturbationSpec(rho, scope, adaptive, eta, head_bias)
        if not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"every_n_steps must be an int >= 1, got {every_n_steps!r}")
        if not isinstance(start_step, int) or start_step < 0:
            raise ValueError(f"start_step must be an int >= 0, got {start_step!r}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.every_n_steps, self.start_step = every_n_steps, start_step
        self.loss = loss
        self.batch_input, self.batch_target = batch_input, batch_target
        self.eps = float(eps)
        self._perturbed: list[Tensor] | None = None
        self._sam: SAM | None = None
        self._batch: Any = None
        self._sharded = False  # under ModelParallelStrategy: the phantom gradient by backward, reduced by FSDP2

    def applies_at(self, step: int) -> bool:
        """Whether the optimizer step with this ``global_step`` (0-based) is a SAM step."""
        due = step >= self.start_step and (step - self.start_step) % self.every_n_steps == 0
        return due and self.perturbation_spec.rho > 0

    # --- prerequisites ---------------------------------------------------------------------------------------

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if not pl_module.automatic_optimization:
            raise ValueError(
                f"SharpnessAware needs automatic optimization, but {type(pl_module).__name__} sets "
                "automatic_optimization = False: remove the callback and take the SAM step in training_step with "
                "lightning_sam.SAM (README, 'Using SAM in your own LightningModule'), or train SAMClassifier."
            )
        if trainer.accumulate_grad_batches != 1:
            raise ValueError(
                f"SharpnessAware needs Trainer(accumulate_grad_batches=1), got {trainer.accumulate_grad_batches}: the "
                "phantom point is built from one batch's gradient. Raise the batch size (or the number of devices) "
                "instead."
            )
        strategy = trainer.strategy
        supported = (SingleDeviceStrategy, DDPStrategy, ModelParallelStrategy)
        if not isinstance(strategy, supported) or isinstance(strategy, DeepSpeedStrategy):
            raise ValueError(
                f"SharpnessAware supports one device, DDP and ModelParallelStrategy, got {type(strategy).__name__}: "
                "its phantom pass calls the unwrapped module, which this strategy does not allow. Use "
                "Trainer(strategy='ddp'), or ModelParallelStrategy with fully_shard in the module's configure_model."
            )
        self._sharded = isinstance(strategy, ModelParallelStrategy)
        if self._sharded and getattr(trainer.precision_plugin, "scaler", None) is not None:
            raise ValueError(
                "SharpnessAware under ModelParallelStrategy supports no GradScaler (16-mixed): its phantom gradient "
                "is reduce-scattered by backward, before it could be unscaled. Use precision='bf16-mixed'."
            )
        self._perturbed = self._scope_parameters(pl_module)  # validated now, found again once the model is built

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the optimizers exist from here on (configure_optimizers runs after setup); Lightning itself refuses
        # several optimizers under automatic optimization
        for optimizer in trainer.optimizers:
            if isinstance(optimizer, SAM):
                raise ValueError(
                    "SharpnessAware found a lightning_sam.SAM optimizer: the callback takes the SAM step itself. "
                    "Return the base optimizer from configure_optimizers (or drop the callback)."
                )
            if getattr(trainer.precision_plugin, "scaler", None) is not None and getattr(
                optimizer, "_step_supports_amp_scaling", False
            ):
                raise ValueError(
                    "SharpnessAware under 16-mixed needs gradients unscaled before the step, but "
                    f"{type(optimizer).__name__} unscales inside its step (a fused optimizer): create it with "
                    "fused=False."
                )

    def _scope_parameters(self, pl_module: pl.LightningModule) -> list[Tensor] | None:
        """The parameters the phantom point moves (``None``: all the optimizer's), in ``named_parameters`` order."""
        spec = self.perturbation_spec
        if spec.scope == "all":
            return None
        if spec.scope == "head":
            if not any(isinstance(m, nn.Linear) for m in pl_module.modules()):
                raise ValueError(
                    f"SharpnessAware(scope='head') perturbs the final nn.Linear, and {type(pl_module).__name__} has "
                    "none: pass scope='all' or the name of the module to perturb."
                )
            _, head = final_linear(pl_module)
            return [head.weight, head.bias] if spec.head_bias and head.bias is not None else [head.weight]
        module = dict(pl_module.named_modules()).get(spec.scope)
        params = [] if module is None else [p for p in module.parameters() if p.requires_grad]
        if not params:
            found = (
                "names no module" if module is None else f"names a {type(module).__name__} without trainable weights"
            )
            raise ValueError(
                f"SharpnessAware(scope={spec.scope!r}) {found} of {type(pl_module).__name__}: pass 'all', 'head' or "
                "the name of a module with trainable parameters (as in module.named_modules())."
            )
        return params

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.perturbation_spec.scope == "head":  # the head is the layer that produces the output
            check_head(trainer, pl_module, None, self.batch_input)
        # configure_model ran after setup: fully_shard replaces the parameters it shards
        self._perturbed = self._scope_parameters(pl_module)

    # --- the SAM step ----------------------------------------------------------------------------------------

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._batch = batch  # already on the device; the phantom loss is taken on the same batch

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._batch = None

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer
    ) -> None:
        # the gradient at θ: averaged over devices by DDP's reducer (or reduce-scattered into shards by FSDP2),
        # unscaled under 16-mixed; None where training_step returned None and Lightning skipped the backward
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        applied = self.applies_at(trainer.global_step) and bool(params) and self._batch is not None
        pl_module.log("sam/applied", float(applied), on_step=True, on_epoch=False)
        if not applied:
            return
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        # ascend to θ + ε; θ is back on exit, also on errors
        with self._fresh_gathers(pl_module), self._wrapper(optimizer).phantom_point():
            grads = self._phantom_gradient(trainer, pl_module, params)
        if scaler is not None:
            grads = self._unscale(scaler, optimizer, grads)
        # descend from it: Lightning clips and steps with the gradient at θ + ε, applied to θ. Each gradient is a
        # tensor of its own (see _owned): assigned, not copied into the old .grad (a copy costs a few % of a step)
        for p, g in zip(params, grads, strict=True):
            p.grad = g

    def _wrapper(self, optimizer: Optimizer) -> SAM:
        """A :class:`~lightning_sam.SAM` sharing the Trainer's optimizer, used only for its ascent and restore."""
        if self._sam is None or self._sam.base_optimizer is not optimizer:
            spec = self.perturbation_spec
            perturbed = self._perturbed
            if perturbed is not None:  # a scope's parameters that the optimizer does not update stay where they are
                updated = {id(p) for group in optimizer.param_groups for p in group["params"]}
                perturbed = [p for p in perturbed if id(p) in updated]
            self._sam = SAM(optimizer, spec.rho, spec.adaptive, spec.eta, perturbed_params=perturbed, eps=self.eps)
        return self._sam

    @contextmanager
    def _fresh_gathers(self, pl_module: pl.LightningModule) -> Iterator[None]:
        """Sharded: no FSDP2 unit holds gathered parameters from before the ascent, nor from the phantom point after.

        FSDP2 gathers from the shards, which the ascent and the restore move in place; a root keeps its gathered
        parameters after a forward, and a later forward would reuse them.
        """
        if self._sharded:
            reshard(pl_module)
        try:
            yield
        finally:
            if self._sharded:
                reshard(pl_module)

    def _phantom_gradient(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, params: list[Tensor]
    ) -> list[Tensor]:
        """The gradient of the phantom loss at the current point, averaged over devices (scaled under 16-mixed)."""
        if self._sharded:
            return self._backward_gradient(trainer, pl_module, params)
        with torch.enable_grad():
            with frozen_batchnorm_stats(pl_module), trainer.precision_plugin.train_step_context():
                loss = self._phantom_loss(pl_module, self._batch)
            scaler = getattr(trainer.precision_plugin, "scaler", None)
            if scaler is not None:
                loss = scaler.scale(loss)
            # autograd.grad bypasses DDP's reducer (one all-reduce per bucket) and leaves .grad alone until the restore
            grads = _owned(torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True))
        if trainer.world_size > 1:
            # one flat all-reduce: every device gets the global-batch phantom gradient
            flat = trainer.strategy.reduce(torch.cat([g.reshape(-1) for g in grads]), reduce_op="mean")
            parts = flat.split([g.numel() for g in grads])
            grads = [part.view_as(g).to(g.dtype) for part, g in zip(parts, grads, strict=True)]
        return grads

    def _backward_gradient(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, params: list[Tensor]
    ) -> list[Tensor]:
        """Sharded: the phantom gradient by ``backward``, whose hooks average it over devices into each ``.grad``.

        FSDP2's hooks reduce-scatter it into each shard's ``.grad`` (a hook such as
        :func:`~lightning_sam.sharding.replicate` averages a whole parameter's); ``autograd.grad`` would bypass them.
        Every ``.grad`` is put back as found; a parameter the loss does not reach gets zeros, as ``autograd.grad``
        gives the other path.
        """
        # taken before the forward: an FSDP2 root registers its gathered parameters from its forward to its backward
        saved = {p: p.grad for p in pl_module.parameters()}
        for p in saved:
            p.grad = None  # backward accumulates: the gradient at θ must not be added in
        try:
            with torch.enable_grad():
                with frozen_batchnorm_stats(pl_module), trainer.precision_plugin.train_step_context():
                    loss = self._phantom_loss(pl_module, self._batch)
                loss.backward()
            return [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
        finally:
            for p, grad in saved.items():
                p.grad = grad

    def _phantom_loss(self, pl_module: pl.LightningModule, batch: Any) -> Tensor:
        if self.loss is not None:
            return self.loss(pl_module, batch)
        return F.cross_entropy(pl_module(self.batch_input(batch)), self.batch_target(batch))

    @staticmethod
    def _unscale(scaler: torch.amp.GradScaler, optimizer: Optimizer, grads: list[Tensor]) -> list[Tensor]:
        """Divides by the loss scale and records an overflow, so that ``scaler.step`` skips the update."""
        device = grads[0].device
        # scale(1) is the current scale as a device tensor: no host sync (get_scale() would make one)
        inv_scale = scaler.scale(torch.ones((), device=device)).double().reciprocal().float()
        torch._foreach_mul_(grads, inv_scale)
        overflow = (~torch.isfinite(global_norm(grads))).float()
        # GradScaler has no public way to report an overflow found after unscale_(): add it to the per-device
        # record that scaler.step() reads to skip and scaler.update() reads to back off. The record already holds
        # the overflow flag of the pass at θ (Lightning unscaled before this hook), so either pass skips the step.
        found = scaler._found_inf_per_device(optimizer)
        flag = next(iter(found.values()))
        torch.maximum(flag, overflow.to(flag.device), out=flag)
        return grads


def _owned(grads: tuple[Tensor, ...]) -> list[Tensor]:
    """The gradients, each a dense tensor no other parameter's gradient shares.

    ``autograd.grad`` may return one tensor for several inputs (through an addition) or an expanded one (through a
    sum); ``backward`` clones those before they reach ``.grad`` (AccumulateGrad), and so must this, since clipping,
    unscaling and optimizers update ``.grad`` in place.
    """
    owned, seen = [], set()
    for g in grads:
        dense = g.is_contiguous() or g.is_contiguous(memory_format=torch.channels_last)
        if not dense or g.data_ptr() in seen:
            g = g.clone()  # dense, in the layout of the original where it has one
        seen.add(g.data_ptr())
        owned.append(g)
    return owned
