"""What the measuring callbacks share: when they run, how they log, and the history they keep."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import TensorBoardLogger
from typing_extensions import override


def check_every_n_epochs(every_n_epochs: int) -> int:
    """Validates the schedule argument: ``n >= 1`` measures after every n-th epoch, ``0`` only at the end."""
    if not isinstance(every_n_epochs, int) or every_n_epochs < 0:
        raise ValueError(f"every_n_epochs must be an int >= 0 (0: only when training ends), got {every_n_epochs!r}")
    return every_n_epochs


def is_last_epoch(trainer: pl.Trainer) -> bool:
    """Whether the training epoch now ending is the run's last (epoch or step limit reached, or a stop requested).

    Lightning sets ``max_epochs = -1`` when only ``max_steps`` is given: that is "no epoch limit", not "every epoch
    is the last".
    """
    epoch_limit = trainer.max_epochs is not None and trainer.max_epochs >= 0
    if epoch_limit and trainer.current_epoch + 1 >= trainer.max_epochs:
        return True
    if trainer.max_steps is not None and trainer.max_steps >= 0 and trainer.global_step >= trainer.max_steps:
        return True
    return bool(trainer.should_stop)


def measurement_due(trainer: pl.Trainer, every_n_epochs: int) -> bool:
    """Whether an epoch-end measurement runs now (``every_n_epochs = 0``: only after the last epoch)."""
    if every_n_epochs == 0:
        return is_last_epoch(trainer)
    return (trainer.current_epoch + 1) % every_n_epochs == 0


def log_measurement(pl_module: pl.LightningModule, metrics: Mapping[str, float]) -> None:
    """Logs epoch-end values that every rank computed identically (``max`` over ranks keeps them exact)."""
    for key, value in metrics.items():
        pl_module.log(key, value, sync_dist=True, reduce_fx="max")


def tensorboard(trainer: pl.Trainer) -> TensorBoardLogger | None:
    """The trainer's TensorBoard logger, if it has one (figures and histograms go there)."""
    return next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)


class MeasuringCallback(Callback):
    """What every measuring callback keeps: a ``history`` of its measurements, saved in checkpoints.

    Attributes:
        history: one dict per measurement: ``epoch``, ``step`` and the measured values.
    """

    def __init__(self) -> None:
        super().__init__()
        self.history: list[dict[str, float]] = []

    def record(self, trainer: pl.Trainer, values: Mapping[str, float]) -> None:
        """Appends one measurement, stamped with the trainer's epoch and step."""
        self.history.append({"epoch": trainer.current_epoch, "step": trainer.global_step, **values})

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(h) for h in self.history]}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [dict(h) for h in state_dict["history"]]
