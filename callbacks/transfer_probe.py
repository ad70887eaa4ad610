"""The paper's transfer evaluation on DomainBed: how well the learnt features serve a new domain.

docs/method.md section 7.
When training ends (and, with ``every_n_epochs``, after every n-th validation epoch) the model is frozen, its
representation of the held-out target domain is extracted, a linear probe
(:func:`~lightning_sam.functional.fit_linear_probe`) is fitted on the target's 80 % "in" part and its accuracy on the
20 % "out" part is logged as ``transfer/<domain>/acc``. The paper reports it rising from SGD to SAM (e.g. PACS,
target cartoon, 0.897 to 0.921).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn
from torch import Tensor
from torch.utils.data import DataLoader
from typing_extensions import override

from lightning_sam.callbacks._batch_fields import batch_input, batch_target
from lightning_sam.callbacks._evaluation_mode import evaluation_mode
from lightning_sam.callbacks._measurement import MeasuringCallback
from lightning_sam.callbacks._phantom import check_head
from lightning_sam.callbacks._representation import RepresentationSpec, final_linear, representation
from lightning_sam.callbacks._sharded_map import sharded_map
from lightning_sam.callbacks.protocols import TransferData  # also importable from here, its former home
from lightning_sam.functional.linear_probe import DEFAULT_L2_GRID, fit_linear_probe

__all__ = ["TransferData", "TransferProbe"]


class TransferProbe(MeasuringCallback):
    """Fits a linear probe on the target domain's frozen representation when training ends (optionally during it).

    The accuracy is logged to the Trainer's loggers as ``transfer/<domain>/acc``, put in
    ``trainer.callback_metrics`` and kept in :attr:`accuracy` and :attr:`history`. The representation is extracted
    in eval mode, and every submodule gets back its own train/eval mode afterwards, so layers the user froze
    (BatchNorm put in eval mode) stay frozen.

    Under DDP every rank extracts its shard of the target data; the gathered representations are those of a
    one-process run, the probe is fitted on rank zero and its accuracy broadcast, so every rank logs the same number.

    Attributes:
        accuracy: the last measured accuracy (``None`` before the first measurement).
        history: one dict per measurement: ``epoch`` (``trainer.current_epoch``, which counts the epochs run when
            training ends), ``step`` and the logged value.

    Args:
        l2_grid: regularisation strengths the probe chooses from on a held-out part of the fit split.
        every_n_epochs: also measure at the end of every n-th validation epoch (logged with ``self.log``); 0: only
            when training ends. When training ends the probe runs only if the final weights were not measured yet.
        seed: seeds the probe's held-out split.
        representation: ``None`` (the input of the model's final ``nn.Linear``, the head), a module name (that
            module's input) or a function ``f(model, x) -> (B, D)``.
        batch_input: reads the model input from a target batch (default ``batch[0]``).
        batch_target: reads the ``(B,)`` class labels from a target batch (default ``batch[1]``).
    """

    def __init__(
        self,
        l2_grid: Sequence[float] = DEFAULT_L2_GRID,
        every_n_epochs: int = 0,
        seed: int = 0,
        representation: RepresentationSpec = None,
        batch_input: Callable[[Any], Tensor] = batch_input,
        batch_target: Callable[[Any], Tensor] = batch_target,
    ) -> None:
        super().__init__()
        if len(l2_grid) == 0 or any(not l2 > 0 for l2 in l2_grid):
            raise ValueError(f"l2_grid must be a non-empty list of positive strengths, got {list(l2_grid)}")
        if every_n_epochs < 0:
            raise ValueError(f"every_n_epochs must be >= 0 (0: only when training ends), got {every_n_epochs}")
        if representation is not None and not (isinstance(representation, str) or callable(representation)):
            raise ValueError(f"representation must be None, a module name or f(model, x), got {representation!r}")
        self.l2_grid = tuple(float(l2) for l2 in l2_grid)
        self.every_n_epochs = every_n_epochs
        self.seed = seed
        self.representation = representation
        self.batch_input, self.batch_target = batch_input, batch_target
        self.accuracy: float | None = None
        self._measured_step = -1

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return  # measures training only
        datamodule = trainer.datamodule
        if not isinstance(datamodule, TransferData) or datamodule.test_domain is None:
            raise ValueError(
                "TransferProbe needs a datamodule with a held-out target domain: use "
                "lightning_sam.datamodules.DomainBedDataModule with test_domain set (e.g. --data.init_args.test_domain "
                f"cartoon), or remove the callback; got {type(datamodule).__name__}"
                + ("" if datamodule is None else f" with test_domain={getattr(datamodule, 'test_domain', None)!r}")
            )
        if self.representation is None:
            try:
                final_linear(pl_module)
            except ValueError as error:
                raise ValueError(f"TransferProbe: {error}") from error
        elif isinstance(self.representation, str) and self.representation not in dict(pl_module.named_modules()):
            raise ValueError(
                f"TransferProbe: representation {self.representation!r} names no module of {type(pl_module).__name__}"
            )

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.representation is None:  # the head's input: find the layer that produces the output, now
            check_head(trainer, pl_module, None, self.batch_input)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING or self.every_n_epochs == 0:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            for key, value in self.measure(trainer, pl_module).items():
                pl_module.log(key, value, sync_dist=True, reduce_fx="max")  # equal on all ranks: max keeps it exact

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._measured_step == trainer.global_step:
            return  # the final weights were measured, and logged, at the last validation epoch end
        metrics = self.measure(trainer, pl_module)
        for key, value in metrics.items():
            trainer.callback_metrics[key] = torch.tensor(value)
        for logger in trainer.loggers:  # self.log is closed in on_train_end
            logger.log_metrics(metrics, step=trainer.global_step)

    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """Fits the probe on the current weights; returns (and records) the metric to log."""
        datamodule = trainer.datamodule
        assert isinstance(datamodule, TransferData), "setup() checked it"
        fit_loader, eval_loader = datamodule.transfer_dataloaders()
        with evaluation_mode(pl_module), torch.no_grad():
            fit_x, fit_y = self._extract(trainer, pl_module, fit_loader)
            eval_x, eval_y = self._extract(trainer, pl_module, eval_loader)
        accuracy: float | None = None
        if trainer.is_global_zero:
            num_classes = getattr(datamodule, "num_classes", None)
            probe = fit_linear_probe(fit_x, fit_y, num_classes, self.l2_grid, seed=self.seed)
            accuracy = probe.accuracy(eval_x, eval_y)
        self.accuracy = trainer.strategy.broadcast(accuracy, src=0)  # every rank logs rank zero's number
        metrics = {f"transfer/{datamodule.test_domain}/acc": self.accuracy}
        self.record(trainer, metrics)
        self._measured_step = trainer.global_step
        return metrics

    def _extract(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loader: DataLoader) -> list[Tensor]:
        """``(N, D)`` float representations and ``(N,)`` labels of the whole dataset, in dataset order."""

        def rows(batch: Any) -> tuple[Tensor, Tensor]:
            x = representation(pl_module, self.batch_input(batch), self.representation)
            return x.float(), self.batch_target(batch).long()

        return sharded_map(trainer, loader, rows, pl_module.device)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "accuracy": self.accuracy,
            "measured_step": self._measured_step,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.accuracy = state_dict["accuracy"]
        self._measured_step = state_dict["measured_step"]
