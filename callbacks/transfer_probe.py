"""The paper's transfer evaluation on DomainBed (METHOD.md section 7): how well the learnt features serve a new domain.

After training on the source domains, the model is frozen, its representation of the held-out target domain is
extracted, a linear probe (:func:`~lightning_sam.functional.fit_linear_probe`) is fitted on the target's 80 % "in"
part and its accuracy on the 20 % "out" part is logged as ``transfer/<domain>/acc``. The paper reports it rising
from SGD to SAM (e.g. PACS, target cartoon, 0.897 to 0.921).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from typing_extensions import override

from lightning_sam.functional.linear_probe import DEFAULT_L2_GRID, fit_linear_probe

Representation = Callable[[pl.LightningModule, Tensor], Tensor]


@runtime_checkable
class TransferData(Protocol):
    """What :class:`TransferProbe` needs from the datamodule (``DomainBedDataModule`` provides it)."""

    test_domain: str | None

    def transfer_dataloaders(self) -> tuple[DataLoader, DataLoader]:
        """The (fit, evaluate) loaders of the target domain; batches start with ``(x, y)``."""
        ...


class TransferProbe(pl.Callback):
    """Fits a linear probe on the target domain's representation when training ends (and optionally during it).

    The result is logged to the Trainer's loggers as ``transfer/<domain>/acc``, put in ``trainer.callback_metrics``
    and kept in :attr:`accuracy`. Every rank computes the same deterministic probe, so all ranks agree.

    Args:
        l2_grid: regularisation strengths the probe chooses from on a held-out part of the fit split.
        every_n_epochs: also run at the end of every n-th validation epoch (logged with ``self.log``); 0: only when
            training ends.
        seed: seeds the probe's held-out split.
        representation: ``f(module, x) -> (B, D)`` features; by default the input of the module's last
            ``nn.Linear`` (the head), captured with a forward hook while calling ``module(x)``.
    """

    def __init__(
        self,
        l2_grid: Sequence[float] = DEFAULT_L2_GRID,
        every_n_epochs: int = 0,
        seed: int = 0,
        representation: Representation | None = None,
    ) -> None:
        super().__init__()
        if len(l2_grid) == 0 or any(not l2 > 0 for l2 in l2_grid):
            raise ValueError(f"l2_grid must be a non-empty list of positive strengths, got {list(l2_grid)}")
        if every_n_epochs < 0:
            raise ValueError(f"every_n_epochs must be >= 0 (0: only when training ends), got {every_n_epochs}")
        if representation is not None and not callable(representation):
            raise ValueError(f"representation must be callable(module, x) or None, got {representation!r}")
        self.l2_grid = tuple(float(l2) for l2 in l2_grid)
        self.every_n_epochs = every_n_epochs
        self.seed = seed
        self.representation = representation
        self.accuracy: float | None = None

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        datamodule = trainer.datamodule
        if not isinstance(datamodule, TransferData) or datamodule.test_domain is None:
            raise ValueError(
                "TransferProbe needs a datamodule with a held-out target domain: use "
                "lightning_sam.datamodules.DomainBedDataModule with test_domain set (e.g. --data.init_args.test_domain "
                f"cartoon), or remove the callback; got {type(datamodule).__name__}"
                + ("" if datamodule is None else f" with test_domain={getattr(datamodule, 'test_domain', None)!r}")
            )
        if self.representation is None and _last_linear(pl_module) is None:
            raise ValueError(
                f"TransferProbe found no nn.Linear in {type(pl_module).__name__} to take the representation from: "
                "pass representation=lambda module, x: ..."
            )

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.every_n_epochs == 0 or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        key, accuracy = self._measure(trainer, pl_module)
        pl_module.log(key, accuracy)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        key, accuracy = self._measure(trainer, pl_module)
        trainer.callback_metrics[key] = torch.tensor(accuracy)
        for logger in trainer.loggers:  # self.log is not allowed in on_train_end
            logger.log_metrics({key: accuracy}, step=trainer.global_step)

    def _measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> tuple[str, float]:
        datamodule = trainer.datamodule
        fit_loader, eval_loader = datamodule.transfer_dataloaders()
        was_training = pl_module.training
        pl_module.eval()
        try:
            x_fit, y_fit = self._features(pl_module, fit_loader)
            x_eval, y_eval = self._features(pl_module, eval_loader)
        finally:
            pl_module.train(was_training)
        probe = fit_linear_probe(
            x_fit, y_fit, num_classes=getattr(datamodule, "num_classes", None), l2_grid=self.l2_grid, seed=self.seed
        )
        self.accuracy = probe.accuracy(x_eval, y_eval)
        return f"transfer/{datamodule.test_domain}/acc", self.accuracy

    @torch.no_grad()
    def _features(self, pl_module: pl.LightningModule, loader: DataLoader) -> tuple[Tensor, Tensor]:
        """``(N, D)`` float32 representations and ``(N,)`` labels of every example in ``loader``."""
        captured: list[Tensor] = []
        hook = None
        if self.representation is None:
            head = _last_linear(pl_module)
            hook = head.register_forward_hook(lambda _module, inputs, _output: captured.append(inputs[0]))
        xs, ys = [], []
        try:
            for batch in loader:
                x, y = batch[0].to(pl_module.device), batch[1]
                if self.representation is None:
                    pl_module(x)
                    z = captured.pop()
                else:
                    z = self.representation(pl_module, x)
                xs.append(z.flatten(1).float().cpu())  # (B, D), one row per example
                ys.append(y.cpu())
        finally:
            if hook is not None:
                hook.remove()
        return torch.cat(xs), torch.cat(ys)


def _last_linear(module: nn.Module) -> nn.Linear | None:
    """The last ``nn.Linear`` registered in ``module`` (the head of a body-then-head classifier)."""
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None
