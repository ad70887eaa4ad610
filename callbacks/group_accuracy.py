"""Group robustness on validation and test: per-group, worst-group and training-weighted average accuracy.

Groups as in docs/method.md section 7 (``batch.group``; ``-1`` examples are ignored). Logged at the end of every
validation and test epoch, synced across processes: ``<stage>/group_<g>/acc`` for every group with examples,
``<stage>/worst_group_acc``, and ``<stage>/avg_acc``, the per-group accuracies weighted by the *training* group
sizes (the "average accuracy" of the Group DRO literature).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor
from typing_extensions import override

from lightning_sam.callbacks._batch_fields import batch_group, batch_input, batch_target
from lightning_sam.callbacks._measurement import MeasuringCallback
from lightning_sam.callbacks.protocols import GroupData
from lightning_sam.functional.group_accuracy import average_group_accuracy, worst_group_accuracy
from lightning_sam.metrics.per_group_accuracy import PerGroupAccuracy


class GroupAccuracy(MeasuringCallback):
    """Per-group accuracy of the model's predictions on the validation and test data.

    The logits are the ``"logits"`` entry of what ``validation_step`` / ``test_step`` return when there is one
    (``SAMClassifier`` returns it), else ``model(x)``.

    Attributes:
        history: one dict per validation or test epoch with the logged values (sanity checks excluded).

    Args:
        num_groups: number of groups; default: the datamodule's ``num_groups``.
        group_weights: ``(num_groups,)`` weights of the average accuracy; default: the datamodule's
            ``train_group_counts()``.
        batch_input: reads the model input from a batch (default ``batch[0]``).
        batch_target: reads the ``(B,)`` labels (default ``batch[1]``).
        batch_group: reads the ``(B,)`` group ids (default ``batch.group``).
    """

    def __init__(
        self,
        num_groups: int | None = None,
        group_weights: Sequence[float] | Tensor | None = None,
        batch_input: Callable[[Any], Tensor] = batch_input,
        batch_target: Callable[[Any], Tensor] = batch_target,
        batch_group: Callable[[Any], Tensor] = batch_group,
    ) -> None:
        super().__init__()
        if num_groups is not None and num_groups < 1:
            raise ValueError(f"num_groups must be >= 1 or None (the datamodule's), got {num_groups}")
        weights = None if group_weights is None else torch.as_tensor(group_weights, dtype=torch.float64)
        if weights is not None:
            if weights.ndim != 1 or bool((weights < 0).any()) or not weights.sum() > 0:
                raise ValueError(f"group_weights must be a 1-D list of weights >= 0, not all 0, got {group_weights}")
            if num_groups is not None and len(weights) != num_groups:
                raise ValueError(f"group_weights has {len(weights)} entries but num_groups is {num_groups}")
        self.num_groups = num_groups if num_groups is not None else (len(weights) if weights is not None else None)
        self.group_weights = weights
        self.batch_input, self.batch_target, self.batch_group = batch_input, batch_target, batch_group
        self.metrics: dict[str, PerGroupAccuracy] = {}

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        datamodule = trainer.datamodule
        if self.num_groups is None:
            if not isinstance(datamodule, GroupData) or datamodule.num_groups < 1:
                raise ValueError(
                    f"GroupAccuracy needs groups, and the datamodule ({type(datamodule).__name__}) declares none: use "
                    "a datamodule with num_groups > 0 (Waterbirds, CelebA, the dominoes, the toy), or pass "
                    "GroupAccuracy(num_groups=..., group_weights=..., batch_group=lambda batch: ...)."
                )
            self.num_groups = datamodule.num_groups
        if self.group_weights is None and not isinstance(datamodule, GroupData):
            raise ValueError(
                "GroupAccuracy weighs the average accuracy by training group sizes, which the datamodule does not "
                "give (no train_group_counts()): pass GroupAccuracy(group_weights=[...])."
            )
        self.metrics = {s: PerGroupAccuracy(self.num_groups).to(pl_module.device) for s in ("val", "test")}

    @override
    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Tensor | Mapping[str, Any] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._update("val", pl_module, outputs, batch)

    @override
    def on_test_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Tensor | Mapping[str, Any] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._update("test", pl_module, outputs, batch)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log("val", trainer, pl_module)

    @override
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log("test", trainer, pl_module)

    def _update(self, stage: str, pl_module: pl.LightningModule, outputs: Any, batch: Any) -> None:
        try:
            group = self.batch_group(batch)
        except (AttributeError, IndexError, KeyError, TypeError) as error:
            raise ValueError(
                f"GroupAccuracy could not read group ids from a {stage} batch ({type(batch).__name__}): {error!r}; "
                "pass batch_group=lambda batch: <(B,) long tensor>."
            ) from error
        if isinstance(outputs, Mapping) and "logits" in outputs:
            logits = outputs["logits"]
        else:
            with torch.no_grad():
                logits = pl_module(self.batch_input(batch))
        self.metrics[stage].update(logits.detach().argmax(dim=1), self.batch_target(batch), group)

    def _log(self, stage: str, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metric = self.metrics[stage]
        accuracy = metric.compute()  # synced over processes
        metric.reset()
        if bool(accuracy.isnan().all()):
            return  # no grouped example in this stage's data
        weights = self._weights(trainer)
        values = {f"{stage}/group_{g}/acc": a.item() for g, a in enumerate(accuracy) if not a.isnan()}
        values[f"{stage}/worst_group_acc"] = worst_group_accuracy(accuracy).item()
        values[f"{stage}/avg_acc"] = average_group_accuracy(accuracy, weights).item()
        for key, value in values.items():
            pl_module.log(key, value, sync_dist=True, reduce_fx="max")  # equal on all ranks: max keeps it exact
        if not trainer.sanity_checking:
            self.record(trainer, values)

    def _weights(self, trainer: pl.Trainer) -> Tensor:
        if self.group_weights is None:
            datamodule = trainer.datamodule
            assert isinstance(datamodule, GroupData), "setup() checked it"
            self.group_weights = datamodule.train_group_counts().to(torch.float64)
        if len(self.group_weights) != self.num_groups:
            raise ValueError(f"GroupAccuracy: {len(self.group_weights)} group weights for {self.num_groups} groups")
        return self.group_weights
