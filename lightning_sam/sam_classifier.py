"""A classifier ``z = W Φ(x) + b`` trained with SGD, SAM, ASAM or LSAM by manual optimization (docs/method.md sec. 3).

One training step, for every optimizer:

1. *Ascend to the phantom point.* Forward at the real parameters and take the ascent gradient: all parameters
   for SAM/ASAM (one backward), the head only for LSAM (a head-only ``autograd.grad`` that reuses the body's
   forward). :meth:`SAM.phantom_point` moves the perturbed parameters to ``θ + ε``.
2. *Descend from it.* Forward at the phantom point (LSAM: only the head, on the same representation), backward,
   restore the real parameters, and update them through Lightning's ``optimizer.step()`` so that ``global_step``,
   checkpointing, ``max_steps`` and precision plugins behave as with automatic optimization.

SGD is step 2 at ``ε = 0`` with no ascent. Under DDP, ``perturbation="global"`` takes ``ε`` from the gradient
averaged over all devices (one device with the global batch), ``"local"`` from each device's own gradient
(m-sharpness, Foret et al.): the ascent's backward then runs without gradient sync.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Literal, get_args

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.trainer.states import TrainerFn
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from lightning_sam.frozen_batchnorm_stats import frozen_batchnorm_stats
from lightning_sam.functional.importance import head_gradient
from lightning_sam.functional.learning_rate_scaling import centred_head
from lightning_sam.functional.perturbation import PerturbationSpec, global_norm
from lightning_sam.sam import SAM, Ascent
from lightning_sam.sharding import data_parallel_mesh, replicate, shard_body

OptimizerName = Literal["sgd", "sam", "asam", "lsam"]
OPTIMIZERS: tuple[str, ...] = get_args(OptimizerName)
RESUMABLE_CHANGES = frozenset({"nonfinite", "compile", "_instantiator"})  # may differ from the checkpoint's on resume


class SAMClassifier(pl.LightningModule):
    """A body (any module producing the representation ``Φ(x)``) and a linear head, trained with (L)SAM.

    The interface callbacks rely on: ``body`` (with ``out_features`` and, optionally, ``feature_blocks``, a dict
    from feature name to the slice of representation columns that carries it), ``head`` (the ``nn.Linear``),
    :meth:`representation`, ``rho`` and ``perturbation_scope``.

    Args:
        body: module mapping an input batch to ``(B, body.out_features)`` representations.
        num_classes: ``K``, the head's outputs.
        optimizer: ``"sgd"``, ``"sam"``, ``"asam"`` or ``"lsam"`` (head-only perturbation).
        rho: perturbation radius ``ρ >= 0`` (ignored by ``"sgd"``).
        perturbation: ``"global"`` or ``"local"`` ascent gradient under multi-device training.
        lr: base SGD learning rate.
        momentum: base SGD momentum.
        nesterov: Nesterov momentum.
        weight_decay: base SGD weight decay.
        lr_schedule: ``"cosine"`` decay to zero over the run, or ``"constant"``.
        asam_eta: ASAM's ``η``.
        lsam_bias: LSAM also perturbs the head's bias (by default only its weight, the paper's
            ``w̃ = w + ρ ∇_w L / ‖∇_w L‖``; near initialisation the bias can carry most of the head gradient, and a
            phantom that moves it shifts whole classes instead of re-weighting examples).
        gradient_clip_val: clip the update gradient to this total norm (``None``: no clipping).
        nonfinite: on a non-finite gradient, ``"guard"`` (default: the step becomes a no-op on the device, without a
            host sync, and the error naming the first such step is raised at the next logging interval or at the
            end of training; the real parameters, momentum and BatchNorm statistics never take a non-finite value),
            ``"raise"`` (a check every step, which waits for the device: stop at once, naming the inputs when they
            are the cause) or ``"skip"`` (skip such steps and train on). Under
            ``16-mixed`` the gradient scaler handles overflows instead.
        compile: compile the body with ``torch.compile`` (default backend, inductor) when training starts, in place
            (``nn.Module.compile``: parameter names and checkpoints stay those of the eager body; may differ on
            resume). Moving to the phantom point and back swaps parameter storage of the same shape, dtype and
            device, which the compiled graph does not guard on: no recompilation per step (a body with BatchNorm
            compiles twice, once for the phantom pass with frozen statistics). The first steps pay for the
            compilation; inductor on a CPU needs a C++ compiler. The head, the loss and the ascent stay eager.
    """

    def __init__(
        self,
        body: nn.Module,
        num_classes: int = 2,
        optimizer: OptimizerName = "lsam",
        rho: float = 0.05,
        perturbation: Literal["global", "local"] = "global",
        lr: float = 0.05,
        momentum: float = 0.9,
        nesterov: bool = False,
        weight_decay: float = 5e-4,
        lr_schedule: Literal["cosine", "constant"] = "cosine",
        asam_eta: float = 0.01,
        lsam_bias: bool = False,
        gradient_clip_val: float | None = None,
        nonfinite: Literal["guard", "raise", "skip"] = "guard",
        compile: bool = False,
    ) -> None:
        super().__init__()
        _check_choice("optimizer", optimizer, OPTIMIZERS)
        _check_choice("perturbation", perturbation, ("global", "local"))
        _check_choice("lr_schedule", lr_schedule, ("cosine", "constant"))
        _check_choice("nonfinite", nonfinite, ("guard", "raise", "skip"))
        if not rho >= 0:
            raise ValueError(f"rho must be >= 0, got {rho}: it is the radius of the perturbation")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if gradient_clip_val is not None and not gradient_clip_val > 0:
            raise ValueError(f"gradient_clip_val must be > 0 or None, got {gradient_clip_val}")
        out_features = getattr(body, "out_features", None)
        if not isinstance(out_features, int):
            raise ValueError(
                f"body {type(body).__name__} must declare its representation size as an int attribute "
                "`out_features` (e.g. lightning_sam.bodies.ResNetBody does)"
            )
        self.save_hyperparameters(ignore=["body"])
        self.automatic_optimization = False
        self.body = body
        self.head = nn.Linear(out_features, num_classes)  # registered last: the model's final nn.Linear
        self.train_loss, self.val_loss, self.test_loss = MeanMetric(), MeanMetric(), MeanMetric()
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        # guard mode: the first step whose gradient was not finite (-1: none), kept on the device
        self._first_nonfinite_step: Tensor | None = None
        self._sharded = False  # the body sharded by configure_model (ModelParallelStrategy)
        self._compiled = False  # the body compiled by configure_model (compile=True)
        # the epoch's (Σ phantom loss · examples, examples) on the device (None: no phantom pass yet this epoch)
        self._phantom_totals: Tensor | None = None

    # --- the interface callbacks use -------------------------------------------------------------------------

    @property
    def perturbation_spec(self) -> PerturbationSpec:
        """The phantom point this module trains with; the measuring callbacks build the same one."""
        hp = self.hparams
        return PerturbationSpec(
            rho=self.rho,
            scope=self.perturbation_scope,
            adaptive=hp.optimizer == "asam",
            eta=hp.asam_eta,
            head_bias=bool(hp.get("lsam_bias", False)),
        )

    @property
    def rho(self) -> float:
        """The perturbation radius this module trains with (0 for SGD)."""
        return 0.0 if self.hparams.optimizer == "sgd" else float(self.hparams.rho)

    @property
    def perturbation_scope(self) -> Literal["head", "all"]:
        """Which parameters the phantom point moves: the head (LSAM) or all of them."""
        return "head" if self.hparams.optimizer == "lsam" else "all"

    def representation(self, x: Tensor) -> Tensor:
        """``Φ(x)``, ``(B, D)``: the head's input."""
        return self.body(x)

    @override
    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))

    # --- training --------------------------------------------------------------------------------------------

    @override
    def training_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        x, y = batch[0], batch[1]
        opt = self.optimizers()
        # a skipped step must leave everything as before: the forward at θ already moved BatchNorm's statistics
        buffers = [b.clone() for b in self.buffers()] if self.hparams.nonfinite != "raise" else None
        try:
            loss, logits = self._sam_step(opt, x, y, buffers)
        except _SkipStep:
            for buffer, saved in zip(self.buffers(), buffers or (), strict=True):
                buffer.copy_(saved)
            opt.zero_grad()
            self.log("train/skipped_steps", 1.0, on_step=False, on_epoch=True, reduce_fx="sum")
            return None
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()
        self.train_loss(loss.detach(), weight=len(y))  # the epoch value: a mean over examples
        self.train_acc(logits.detach(), y)
        self.log("train/loss", self.train_loss, on_step=True, on_epoch=True, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=True, on_epoch=True, prog_bar=True)
        return loss.detach()

    def _sam_step(self, opt: Any, x: Tensor, y: Tensor, buffers: list[Tensor] | None) -> tuple[Tensor, Tensor]:
        """One update; returns the loss and logits at the real parameters."""
        name = self.hparams.optimizer

        # ascend to the phantom point: the gradient at the real parameters (for SGD, the update gradient)
        local_ascent = name in ("sam", "asam") and self.hparams.perturbation == "local"
        with opt.toggle_model(sync_grad=False) if local_ascent else nullcontext():
            representation = self.body(x)
            logits = self.head(representation)
            loss = F.cross_entropy(logits, y)
            if name == "lsam":
                self._set_head_ascent_gradient(representation, logits, y)
            else:
                self.manual_backward(loss)

        if name != "sgd":
            # descend from it: the gradient at θ + ε, applied to θ after the restore
            with opt.optimizer.phantom_point() as ascent:
                if name == "lsam":
                    # only the head holds a gradient, the ascent's (the step began with none, as SGD's does): clear
                    # it, which is all that zero_grad would do here, at a fraction of the cost on a small model
                    for p in self._lsam_params():
                        p.grad = None
                    # Φ(x) does not move under LSAM: reuse the body's forward, re-run only the head
                    phantom_logits = self.head(representation)
                else:
                    opt.zero_grad()
                    with frozen_batchnorm_stats(self.body):
                        phantom_logits = self(x)
                phantom_loss = F.cross_entropy(phantom_logits, y)
                # a non-finite gradient at θ gives a zero scale and a non-finite phantom point, caught here
                self._check_finite(phantom_loss, "loss at the phantom point", x)
                self.manual_backward(phantom_loss)
            self._log_ascent(ascent, phantom_loss, len(y), scaled=name != "lsam")
        else:
            self._check_finite(loss, "loss", x)

        guard = self._guarded()
        found_inf = self._flag_nonfinite_gradient(opt) if guard else None
        opt.step()  # with found_inf set, the fused base step leaves parameters and momentum as they were
        if found_inf is not None and buffers is not None:
            self._keep_buffers_unless_finite(found_inf, buffers)
        opt.zero_grad()
        return loss, logits

    def _guarded(self) -> bool:
        """Whether steps are guarded on the device: ``nonfinite="guard"`` where fused SGD runs, without a GradScaler."""
        trainer = self._trainer  # None before fit: no GradScaler to defer to
        scaler = None if trainer is None else getattr(trainer.precision_plugin, "scaler", None)
        # fused SGD takes no DTensors (torch 2.14): a sharded body checks on the host, as "raise" does
        fused = self.device.type in ("cpu", "cuda") and not self._sharded
        return self.hparams.nonfinite == "guard" and scaler is None and fused

    def _flag_nonfinite_gradient(self, opt: Any) -> Tensor:
        """Tells the fused base optimizer, on the device, whether this step's gradient is non-finite."""
        base = getattr(opt.optimizer, "base_optimizer", opt.optimizer)
        grads = [p.grad for group in base.param_groups for p in group["params"] if p.grad is not None]
        found_inf = torch.zeros((), device=self.device)
        # GradScaler's kernel: one pass over the gradients, no host sync (with a scale of 1, nothing is unscaled)
        torch._amp_foreach_non_finite_check_and_unscale_(grads, found_inf, torch.ones((), device=self.device))
        for group in base.param_groups:  # a checkpoint of a "raise" run may bring non-fused groups
            group["fused"], group["foreach"] = True, False
        base.grad_scale, base.found_inf = None, found_inf
        first = self._first_nonfinite_step
        if first is None:
            first = self._first_nonfinite_step = torch.full((), -1, dtype=torch.long, device=self.device)
        first.copy_(torch.where((found_inf > 0) & (first < 0), self.trainer.global_step, first))
        return found_inf

    @torch.no_grad()
    def _keep_buffers_unless_finite(self, found_inf: Tensor, saved: list[Tensor]) -> None:
        """Puts the buffers (BatchNorm statistics) back as they were before a non-finite step, on the device."""
        for buffer, before in zip(self.buffers(), saved, strict=True):
            buffer.copy_(torch.where(found_inf > 0, before, buffer))

    def _raise_if_a_step_was_not_finite(self) -> None:
        """Guard mode: one host sync per logging interval, and at the end of training."""
        first = self._first_nonfinite_step
        if first is None or int(first) < 0:
            return
        raise FloatingPointError(
            f"non-finite gradient at global step {int(first)} (the first one): that step, and any such step after it, "
            "left the parameters, momentum and BatchNorm statistics as they were. Lower --model.lr or --model.rho, "
            "set --model.gradient_clip_val, check the data (--model.nonfinite raise stops at the step and names "
            "non-finite inputs), or pass --model.nonfinite skip to train on past such steps."
        )

    @override
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._guarded() and self.trainer.global_step % self.trainer.log_every_n_steps == 0:
            self._raise_if_a_step_was_not_finite()

    @override
    def on_train_epoch_start(self) -> None:
        self._phantom_totals = None

    @override
    def on_train_epoch_end(self) -> None:
        if self._phantom_totals is not None:  # SAM, ASAM and LSAM, after at least one step in this epoch
            total, examples = self._phantom_totals
            mean = total / examples
            self.log("train/loss_phantom_epoch", mean, on_step=False, on_epoch=True, sync_dist=True)

    @override
    def on_train_end(self) -> None:
        if self._guarded():
            self._raise_if_a_step_was_not_finite()

    def _set_head_ascent_gradient(self, representation: Tensor, logits: Tensor, y: Tensor) -> None:
        """LSAM: ``∇_W L`` (and ``∇_b L``) into the head's ``.grad``, in closed form from the forward's logits.

        One matmul instead of a head-only backward, and the forward's graph stays free for the descent's backward.
        """
        head = self._lsam_params()
        grads = head_gradient(representation, logits, y, bias=len(head) > 1)
        grads = [g if g.dtype == p.dtype else g.to(p.dtype) for p, g in zip(head, grads, strict=True)]  # autocast
        if self.hparams.perturbation == "global" and self.trainer.world_size > 1:
            # the head gradient is small: one all-reduce of it gives every device the global-batch direction
            flat = self.trainer.strategy.reduce(torch.cat([g.reshape(-1) for g in grads]), reduce_op="mean")
            parts = flat.split([g.numel() for g in grads])
            grads = [part.view_as(g) for part, g in zip(parts, grads, strict=True)]
        for p, g in zip(head, grads, strict=True):
            p.grad = g

    def _check_finite(self, loss: Tensor, where: str, x: Any) -> None:
        if getattr(self.trainer.precision_plugin, "scaler", None) is not None:
            return  # 16-mixed: the GradScaler skips overflowing steps and lowers its scale
        if self._guarded():
            return  # checked on the device before the step (_flag_nonfinite_gradient), no host sync
        finite = self.trainer.strategy.reduce_boolean_decision(bool(torch.isfinite(loss)), all=True)
        if finite:
            return
        if self.hparams.nonfinite == "skip":
            raise _SkipStep
        step = self.trainer.global_step
        bad_inputs = _nonfinite_examples(x)
        if bad_inputs:
            raise FloatingPointError(
                f"non-finite {where} at global step {step}: the input batch itself holds non-finite values (examples "
                f"{bad_inputs} of the batch); the parameters were left at the real point. Check the data (a corrupt "
                "file or a bad transform), or pass --model.nonfinite skip to skip such steps."
            )
        raise FloatingPointError(
            f"non-finite {where} ({loss.item()}) at global step {step}; the parameters were left at the real point. "
            "Lower --model.lr or --model.rho, set --model.gradient_clip_val, or pass --model.nonfinite skip to skip "
            "such steps."
        )

    def _log_ascent(self, ascent: Ascent, phantom_loss: Tensor, batch_size: int, scaled: bool) -> None:
        # the epoch mean, summed on the device: a self.log every step costs more than LSAM's whole head ascent on a
        # small model, and loggers only write step values at the logging interval anyway
        if self._phantom_totals is None:
            self._phantom_totals = torch.zeros(2, device=self.device)
        # a step without a phantom point (a non-finite ascent gradient: a GradScaler overflow, say) has a NaN phantom
        # loss; it counts in neither total, decided on the device
        loss = phantom_loss.detach().float()
        weight = torch.isfinite(loss) * batch_size
        self._phantom_totals.add_(torch.stack([torch.nan_to_num(loss), torch.ones_like(loss)]) * weight)
        if (self.trainer.global_step + 1) % self.trainer.log_every_n_steps:
            return  # the step-only statistics are written at the logging interval: computed only then
        self.log("train/loss_phantom_step", phantom_loss.detach(), on_step=True, on_epoch=False)
        grad_norm = ascent.grad_norm
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        if scaled and scaler is not None:
            grad_norm = grad_norm / scaler.get_scale()  # the ascent backward ran on the scaled loss
        self.log("train/grad_norm", grad_norm.float(), on_step=True, on_epoch=False)
        self.log("train/perturbation_norm", ascent.perturbation_norm.float(), on_step=True, on_epoch=False)
        self.log("train/rho_relative", self._rho_relative(), on_step=True, on_epoch=False)

    @torch.no_grad()
    def _rho_relative(self) -> Tensor:
        """``ρ / ‖W_c‖`` (LSAM: the phantom moves the centred head by up to ``ρ``) or ``ρ / ‖θ‖`` (SAM, ASAM).

        The regime: near or above 1 the phantom can reverse features (docs/method.md section 5).
        """
        if self.perturbation_scope == "head":
            size = torch.linalg.matrix_norm(centred_head(self.head.weight.float()))
        else:
            size = global_norm([p for p in self.parameters() if p.requires_grad])
        return self.rho / size

    @override
    def on_before_optimizer_step(self, optimizer: Any) -> None:
        # gradients are unscaled here under 16-mixed (Lightning's precision plugin calls this hook after unscale_)
        clip = self.hparams.gradient_clip_val
        if clip is not None:
            self.clip_gradients(optimizer, gradient_clip_val=clip, gradient_clip_algorithm="norm")

    # --- evaluation ------------------------------------------------------------------------------------------

    def _evaluate(self, batch: Any, stage: str, loss_metric: MeanMetric, acc: MulticlassAccuracy) -> dict[str, Tensor]:
        x, y = batch[0], batch[1]
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        loss_metric(loss, weight=len(y))  # a partial last batch counts by its examples
        acc(logits, y)
        self.log(f"{stage}/loss", loss_metric, on_epoch=True, prog_bar=True)
        self.log(f"{stage}/acc", acc, on_epoch=True, prog_bar=True)
        return {"loss": loss, "logits": logits}

    @override
    def validation_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        return self._evaluate(batch, "val", self.val_loss, self.val_acc)

    @override
    def test_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        return self._evaluate(batch, "test", self.test_loss, self.test_acc)

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._check_same_architecture(checkpoint)
        if self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING:
            self._check_same_training(checkpoint)

    def _check_same_architecture(self, checkpoint: dict[str, Any]) -> None:
        if "state_dict" not in checkpoint:
            return  # a sharded checkpoint: the distributed load has matched every key and shape already
        own = {k: tuple(v.shape) for k, v in self.state_dict().items()}
        theirs = {k: tuple(v.shape) for k, v in checkpoint.get("state_dict", {}).items()}
        if own == theirs:
            return
        missing, unexpected = sorted(own.keys() - theirs.keys()), sorted(theirs.keys() - own.keys())
        reshaped = sorted(k for k in own.keys() & theirs.keys() if own[k] != theirs[k])
        details = "; ".join(
            f"{label}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("other shapes", reshaped))
            if keys
        )
        raise ValueError(
            f"the checkpoint was written by a different model than this {type(self.body).__name__} body with "
            f"{self.hparams.num_classes} classes ({details}). Resume with the body, num_classes and data of the run "
            "that wrote it."
        )

    def _check_same_training(self, checkpoint: dict[str, Any]) -> None:
        """Resuming continues the checkpoint's optimizer and schedule: refuse settings that they would ignore.

        The rule: every hyperparameter but ``nonfinite`` (a failure policy) must be the checkpoint's, and a cosine
        schedule must span the same number of steps (a longer run would restart the cosine past its end).
        """
        theirs = checkpoint.get("hyper_parameters", {})
        if theirs:
            theirs = {**LEGACY_HYPERPARAMETERS, **theirs}
        changed = [
            f"{key}: {theirs[key]!r} in the checkpoint, {value!r} now"
            for key, value in self.hparams.items()
            if key in theirs and key not in RESUMABLE_CHANGES and theirs[key] != value
        ]
        schedulers = checkpoint.get("lr_schedulers") or [{}]
        if self.hparams.lr_schedule == "cosine" and "T_max" in schedulers[0]:
            total = max(1, int(self.trainer.estimated_stepping_batches))
            if schedulers[0]["T_max"] != total:
                changed.append(
                    f"cosine schedule length: {schedulers[0]['T_max']} steps in the checkpoint, {total} now "
                    "(max_epochs, max_steps, batch size or data size changed)"
                )
        if changed:
            raise ValueError(
                "cannot resume from this checkpoint with other training settings (" + "; ".join(changed) + "): "
                "resuming continues its optimizer and schedule, which would silently ignore them. Resume with the "
                "checkpoint's values, or start a new run from its weights (python train.py --weights_from "
                "<checkpoint>: a new optimizer and schedule)."
            )

    # --- sharding and optimizer ------------------------------------------------------------------------------

    @override
    def configure_model(self) -> None:
        """Under Lightning's ``ModelParallelStrategy``: shards the body over the processes, keeps the head whole.

        The policy is :mod:`lightning_sam.sharding`'s (FSDP2 per residual stage, or per child block); elsewhere
        (one device, DDP) nothing changes. With ``compile=True`` it first compiles the body (on any strategy).
        """
        self._compile_body()  # in place, before any sharding or DDP wrapper, as torch.compile's docs advise
        mesh = self.device_mesh
        if mesh is None or self._sharded:
            return  # not sharding, or sharded already (the hook runs again for validate and test)
        if self.hparams.optimizer in ("sam", "asam") and self.hparams.perturbation == "local":
            raise ValueError(
                "perturbation='local' needs the ascent's backward without gradient averaging, which a sharded body "
                "cannot skip (its gradients are reduce-scattered): use perturbation='global' with ModelParallelStrategy"
            )
        mesh = data_parallel_mesh(mesh)
        shard_body(self.body, mesh)
        replicate(self.head, mesh)
        self._sharded = True

    def _compile_body(self) -> None:
        """``compile=True``: the body compiled in place, once (``configure_model`` runs again for validate and test)."""
        if self.hparams.get("compile", False) and not self._compiled:
            self.body.compile()
            self._compiled = True

    @override
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        base = torch.optim.SGD(
            self.parameters(), lr=hp.lr, momentum=hp.momentum, nesterov=hp.nesterov, weight_decay=hp.weight_decay,
            fused=True if self._guarded() else None,  # fused SGD skips a flagged step on the device
        )  # fmt: skip
        if hp.optimizer == "sgd":
            optimizer: torch.optim.Optimizer = base
        else:
            optimizer = SAM(
                base,
                rho=hp.rho,
                adaptive=hp.optimizer == "asam",
                eta=hp.asam_eta,
                perturbed_params=self._lsam_params() if hp.optimizer == "lsam" else None,
            )
        if hp.lr_schedule == "constant":
            return optimizer
        total = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _lsam_params(self) -> list[Tensor]:
        """The parameters LSAM perturbs: the head's weight, and its bias with ``lsam_bias``."""
        bias = self.head.bias if self.hparams.get("lsam_bias", False) and self.head.bias is not None else None
        return [self.head.weight] if bias is None else [self.head.weight, bias]


# hyperparameters added since the first release, with the behaviour a checkpoint without them was trained with
LEGACY_HYPERPARAMETERS = {"lsam_bias": True}  # LSAM perturbed the head's bias too before the option existed


class _SkipStep(Exception):
    """Raised inside a training step to abandon it (``nonfinite="skip"``)."""


def _check_choice(argument: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{argument} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def _nonfinite_examples(x: Any) -> list[int]:
    """Positions in a batch whose input is not finite (at most 10)."""
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim == 0:
        return []
    finite = torch.isfinite(x.flatten(1) if x.ndim > 1 else x[:, None]).all(dim=1)
    return (~finite).nonzero().flatten()[:10].tolist()
