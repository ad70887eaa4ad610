"""Per-feature linear probes of the frozen representation: the measure of feature quality (docs/method.md section 6).

At the end of every ``every_n_epochs``-th training epoch (and once more when training ends, if the final weights
were not probed yet) the model is frozen, its representation of the decorrelated probe-train and probe-test data
is extracted, and for every annotated feature an L2-regularised logistic-regression probe
(:func:`~lightning_sam.functional.fit_linear_probe`) is fitted and scored. Logged: ``probe/<feature>/acc`` and
``probe/<feature>/error`` (``1 − acc``) on the probe-test data. The paper's finding: SAM lowers the error of the
hard feature.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader
from typing_extensions import override

from lightning_sam.callbacks._batch_fields import batch_features, batch_input
from lightning_sam.callbacks._evaluation_mode import evaluation_mode
from lightning_sam.callbacks._measurement import (
    MeasuringCallback,
    check_every_n_epochs,
    is_last_epoch,
    log_measurement,
    measurement_due,
)
from lightning_sam.callbacks._phantom import check_head
from lightning_sam.callbacks._representation import RepresentationSpec, representation
from lightning_sam.callbacks._sharded_map import sharded_map
from lightning_sam.callbacks.protocols import FeatureData
from lightning_sam.functional.linear_probe import DEFAULT_L2_GRID, LinearProbe, fit_linear_probe

ProbeLoaders = tuple[DataLoader, DataLoader] | Callable[[], tuple[DataLoader, DataLoader]]


class FeatureProbe(MeasuringCallback):
    """Fits one linear probe per annotated feature on the frozen representation and logs its test accuracy.

    With a ``lightning_sam`` datamodule nothing needs configuring: the probe data are its decorrelated probe
    splits and the features its ``feature_names``. In another project pass ``probe_dataloaders``,
    ``feature_names`` and a ``batch_features`` function reading the ``(B, F)`` feature labels from a batch.

    Under DDP every rank extracts its shard of the probe data; the gathered representations are those of a
    one-process run, the probes are fitted on rank zero and broadcast, so every rank logs the same numbers.

    Attributes:
        probes: the last fitted probe of every feature (on the model's device), e.g. for
            :class:`LearningRateScaling`'s feature directions.
        history: one dict per probing: ``epoch``, ``step`` and the logged values.

    Args:
        every_n_epochs: probe after every n-th training epoch; ``0``: only when training ends.
        at_fit_end: also probe when training ends if the final weights were not probed yet.
        representation: ``None`` (the input of the model's final ``nn.Linear``), a module name (that module's
            input) or a function ``f(model, x) -> (B, D)``.
        probe_dataloaders: the (fit, evaluate) loaders, or a function returning them; default: the datamodule's
            ``probe_dataloaders()``.
        feature_names: the features, in the order of the columns ``batch_features`` returns; default: the
            datamodule's ``feature_names``.
        batch_features: reads the ``(B, F)`` long feature labels from a batch (default: ``batch.features``).
        batch_input: reads the model input from a batch (default: ``batch[0]``).
        l2_grid: the regularisation strengths each probe chooses from.
        val_fraction: share of the probe-train data held out to choose the strength.
        seed: seeds that held-out split.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        at_fit_end: bool = True,
        representation: RepresentationSpec = None,
        probe_dataloaders: ProbeLoaders | None = None,
        feature_names: Sequence[str] | None = None,
        batch_features: Callable[[Any], Tensor] = batch_features,
        batch_input: Callable[[Any], Tensor] = batch_input,
        l2_grid: Sequence[float] = DEFAULT_L2_GRID,
        val_fraction: float = 0.2,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if representation is not None and not (isinstance(representation, str) or callable(representation)):
            raise ValueError(f"representation must be None, a module name or f(model, x), got {representation!r}")
        pair = isinstance(probe_dataloaders, Sequence) and len(probe_dataloaders) == 2
        if probe_dataloaders is not None and not callable(probe_dataloaders) and not pair:
            raise ValueError("probe_dataloaders must be a (fit, evaluate) pair of loaders or a function returning one")
        if feature_names is not None and (len(feature_names) == 0 or len(set(feature_names)) != len(feature_names)):
            raise ValueError(f"feature_names must be non-empty and distinct, got {list(feature_names)}")
        if not l2_grid or any(not lam >= 0 for lam in l2_grid):
            raise ValueError(f"l2_grid must be a non-empty sequence of values >= 0, got {list(l2_grid)}")
        if not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.every_n_epochs = check_every_n_epochs(every_n_epochs)
        self.at_fit_end = at_fit_end
        self.representation = representation
        self.probe_dataloaders = probe_dataloaders
        self.feature_names = tuple(feature_names) if feature_names is not None else None
        self.batch_features = batch_features
        self.batch_input = batch_input
        self.l2_grid = tuple(float(lam) for lam in l2_grid)
        self.val_fraction = val_fraction
        self.seed = seed
        self.probes: dict[str, LinearProbe] = {}
        self._probed_step = -1

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return  # measures training only
        if self.probe_dataloaders is not None and self.feature_names is not None:
            return
        datamodule = trainer.datamodule
        if not isinstance(datamodule, FeatureData) or not datamodule.feature_names:
            raise ValueError(
                "FeatureProbe needs probe data with feature labels, and the datamodule "
                f"({type(datamodule).__name__}) declares none: use a lightning_sam datamodule (it has feature_names "
                "and probe_dataloaders()), or pass FeatureProbe(probe_dataloaders=(fit_loader, test_loader), "
                "feature_names=[...], batch_features=lambda batch: ...) for your own data."
            )
        if self.feature_names is None:
            self.feature_names = tuple(datamodule.feature_names)
        if self.probe_dataloaders is None:
            self.probe_dataloaders = datamodule.probe_dataloaders
        loaders = self.probe_dataloaders() if callable(self.probe_dataloaders) else self.probe_dataloaders
        features = getattr(loaders[0].dataset, "features", None)  # the labels, when held without the images
        if isinstance(features, Tensor) and features.ndim == 2:
            self._check_every_feature_varies(features)  # fail now, not after the first epoch

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.representation is None:  # the head's input: find the layer that produces the output, now
            check_head(trainer, pl_module, None, self.batch_input)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if measurement_due(trainer, self.every_n_epochs) or (self.at_fit_end and is_last_epoch(trainer)):
            log_measurement(pl_module, self.probe(trainer, pl_module))

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # stopped early or between epochs: self.log is closed here, so write to the loggers directly
        if self.at_fit_end and self._probed_step != trainer.global_step:
            metrics = self.probe(trainer, pl_module)
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)

    def probe(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """Fits every feature's probe on the current weights; returns (and records) the metrics to log."""
        names = self.feature_names
        assert names is not None, "setup() sets them"
        assert self.probe_dataloaders is not None, "setup() sets them"
        loaders = self.probe_dataloaders() if callable(self.probe_dataloaders) else self.probe_dataloaders
        with evaluation_mode(pl_module), torch.no_grad():
            fit_x, fit_f = self._extract(trainer, pl_module, loaders[0])
            test_x, test_f = self._extract(trainer, pl_module, loaders[1])
        result: Any = None
        if trainer.is_global_zero:
            result = self._fit(fit_x, fit_f, test_x, test_f)
        result = trainer.strategy.broadcast(result, src=0)  # every rank logs rank zero's numbers
        probes, metrics = result
        self.probes = {name: LinearProbe(**fields).to(pl_module.device) for name, fields in probes.items()}
        self.record(trainer, metrics)
        self._probed_step = trainer.global_step
        return metrics

    def _extract(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loader: DataLoader) -> list[Tensor]:
        names = self.feature_names
        assert names is not None

        def rows(batch: Any) -> tuple[Tensor, Tensor]:
            try:
                features = self.batch_features(batch)
            except (AttributeError, IndexError, KeyError, TypeError) as error:
                raise ValueError(
                    f"FeatureProbe could not read feature labels from a probe batch ({type(batch).__name__}): "
                    f"{error!r}. Probe batches must carry the labels of {list(names)}; pass "
                    "batch_features=lambda batch: <(B, F) long tensor> matching your batch layout."
                ) from error
            if not isinstance(features, Tensor) or features.ndim != 2 or features.shape[1] != len(names):
                shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
                raise ValueError(
                    f"FeatureProbe: batch_features must return a (B, {len(names)}) tensor, one column per feature "
                    f"{list(names)}, got {shape}"
                )
            x = representation(pl_module, self.batch_input(batch), self.representation)
            return x.float(), features.long()

        return sharded_map(trainer, loader, rows, pl_module.device)

    def _check_every_feature_varies(self, features: Tensor) -> None:
        for k, name in enumerate(self.feature_names or ()):
            classes = torch.unique(features[:, k])
            if len(classes) < 2:
                raise ValueError(
                    f"FeatureProbe: feature {name!r} has a single class ({classes.tolist()}) in the probe-train "
                    "data, so no probe can be fitted: the probe split must vary every feature (decorrelated probe "
                    "data, docs/method.md section 6); drop the feature from feature_names or fix the probe split."
                )

    def _fit(
        self, fit_x: Tensor, fit_f: Tensor, test_x: Tensor, test_f: Tensor
    ) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
        probes, metrics = {}, {}
        self._check_every_feature_varies(fit_f)
        for k, name in enumerate(self.feature_names or ()):
            num_classes = int(max(fit_f[:, k].max(), test_f[:, k].max())) + 1
            probe = fit_linear_probe(fit_x, fit_f[:, k], num_classes, self.l2_grid, self.val_fraction, self.seed)
            acc = probe.accuracy(test_x, test_f[:, k])
            probes[name] = {f.name: _to_cpu(getattr(probe, f.name)) for f in dataclasses.fields(probe)}
            metrics[f"probe/{name}/acc"] = acc
            metrics[f"probe/{name}/error"] = 1.0 - acc
        return probes, metrics

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "probes": {
                name: {f.name: _to_cpu(getattr(p, f.name)) for f in dataclasses.fields(p)}
                for name, p in self.probes.items()
            },
            "probed_step": self._probed_step,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.probes = {name: LinearProbe(**fields) for name, fields in state_dict["probes"].items()}
        self._probed_step = state_dict["probed_step"]


def _to_cpu(value: Any) -> Any:
    return value.detach().cpu() if isinstance(value, Tensor) else value
