"""Records a toy run's trajectory: per-step loss, dense early measurements, per-batch LSAM scaling, snapshots.

The measurement callbacks measure at epoch ends; on the toy SGD fits the training set within one epoch (16 steps),
so this callback calls their public ``measure`` at the steps of :func:`measurement_steps` instead (dense early,
sparse later). For LSAM it also records, for every training batch before its update, the head's phantom-to-real
weight on each feature, ``ṽ_k / v_k`` (the distribution the paper's Figure 4 shows), from the same closed-form
phantom head the training step uses.
"""

from __future__ import annotations

import copy
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from torch import Tensor
from typing_extensions import override

from lightning_sam.callbacks import ImportanceWeights, LearningRateScaling
from lightning_sam.functional import block_directions, feature_weight, head_phantom
from lightning_sam.sam_classifier import SAMClassifier


class TrajectoryRecorder(Callback):
    """Calls the measurement callbacks at chosen steps and keeps what the toy report needs.

    Attributes:
        step_losses: the batch training loss of every step, in order.
        measurements: one dict per measured step: ``step`` and the Gini coefficients, ``v`` and ratios.
        batch_scaling: LSAM only: one ``(step, ṽ_easy / v_easy, ṽ_hard / v_hard)`` per training batch.
        snapshots: step -> CPU copy of the model's ``state_dict`` after that step (if ``keep_snapshots``).

    Args:
        importance: the run's :class:`ImportanceWeights` (registered with the Trainer, so that it is set up).
        scaling: the run's :class:`LearningRateScaling` (likewise).
        steps: the optimizer steps after which to measure.
        keep_snapshots: keep a copy of the weights at every measured step.
    """

    def __init__(
        self,
        importance: ImportanceWeights,
        scaling: LearningRateScaling,
        steps: list[int],
        keep_snapshots: bool = False,
    ) -> None:
        super().__init__()
        self.importance, self.scaling = importance, scaling
        self.steps = set(steps)
        self.keep_snapshots = keep_snapshots
        self.step_losses: list[float] = []
        self.measurements: list[dict[str, float]] = []
        self.batch_scaling: list[tuple[int, float, float]] = []
        self.snapshots: dict[int, dict[str, Tensor]] = {}

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not isinstance(pl_module, SAMClassifier) or not hasattr(pl_module.body, "feature_blocks"):
            raise ValueError("TrajectoryRecorder records the toy: it needs a SAMClassifier with a TwoBranchMLP body")

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        if pl_module.hparams.optimizer != "lsam":
            return
        with torch.no_grad():
            # the phantom head this very step ascends to (LSAM moves the head only, so Φ(x) is the real one)
            head = pl_module.head
            rep = pl_module.representation(batch[0])
            w_tilde, _ = head_phantom(rep, batch[1], head.weight, head.bias, pl_module.rho)
            dim = rep.shape[1]
            ratios = []
            for name in ("easy", "hard"):
                u = block_directions(pl_module.body.feature_blocks[name], dim)
                ratios.append((feature_weight(w_tilde, u) / feature_weight(head.weight, u)).item())
        self.batch_scaling.append((trainer.global_step + 1, ratios[0], ratios[1]))

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.step_losses.append(float(loss) if loss is not None else float("nan"))
        step = trainer.global_step
        if step not in self.steps:
            return
        values = {**self.importance.measure(trainer, pl_module), **self.scaling.measure(trainer, pl_module)}
        self.measurements.append({"step": float(step), **values})
        if self.keep_snapshots:
            self.snapshots[step] = copy.deepcopy({k: v.detach().cpu() for k, v in pl_module.state_dict().items()})
