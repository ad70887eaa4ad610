"""Tiny modules, data, Trainers and callbacks shared by the tests, after Lightning's ``BoringModel``.

A plain LightningModule that knows nothing of SAM, a two-feature datamodule, a CPU Trainer factory, a callback that
pre-empts a run, and a snapshot of everything a callback must leave alone. ``tests/conftest.py`` serves the first
three as fixtures.
"""

from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lightning_sam.datamodules import FeatureDataModule
from lightning_sam.datamodules.feature_tensor_dataset import FeatureTensorDataset


class TinyClassifier(pl.LightningModule):
    """A body with BatchNorm and dropout, a linear head, automatic optimization; knows nothing of SAM."""

    def __init__(self, in_features: int = 3, hidden: int = 8, lr: float = 0.1, batchnorm: bool = True) -> None:
        super().__init__()
        self.lr = lr
        norm = nn.BatchNorm1d(hidden) if batchnorm else nn.Identity()
        self.body = nn.Sequential(nn.Linear(in_features, hidden), norm, nn.ReLU(), nn.Dropout(0.1))
        self.head = nn.Linear(hidden, 2)

    def forward(self, x):
        return self.head(self.body(x))

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        return {"loss": F.cross_entropy(logits := self(batch[0]), batch[1]), "logits": logits}

    def test_step(self, batch, batch_idx):
        return self.validation_step(batch, batch_idx)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def two_feature_split(n: int, generator: torch.Generator, correlated: bool) -> FeatureTensorDataset:
    """``x[:, 0]`` carries feature ``a`` clearly, ``x[:, 1]`` feature ``b`` faintly, ``x[:, 2]`` is noise."""
    a = torch.randint(0, 2, (n,), generator=generator)
    b = a.clone() if correlated else torch.randint(0, 2, (n,), generator=generator)
    noise = torch.randn(n, 3, generator=generator)
    x = noise * torch.tensor([0.3, 1.0, 1.0]) + torch.stack([2 * a - 1, 0.5 * (2 * b - 1), 0 * a], 1).float()
    return FeatureTensorDataset(x, a, torch.stack([a, b], dim=1), 2 * a + b)


class TwoFeatureDataModule(FeatureDataModule):
    """Label ``a``; features ``("a", "b")``; groups ``2a + b``; decorrelated probe splits."""

    num_classes = 2
    feature_names = ("a", "b")
    num_groups = 4

    def __init__(self, batch_size: int = 32, n: int = 96, seed: int = 0) -> None:
        super().__init__("unused", batch_size=batch_size, seed=seed)
        self.n = n

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        g = torch.Generator().manual_seed(self.seed)
        self.train_dataset = two_feature_split(self.n, g, correlated=False)
        self.val_dataset = two_feature_split(self.n // 2, g, correlated=False)
        self.test_dataset = two_feature_split(self.n // 2, g, correlated=False)
        self.probe_train_dataset = two_feature_split(self.n, g, correlated=False)
        self.probe_test_dataset = two_feature_split(self.n, g, correlated=False)


def trainer(root: str | Path | None, max_epochs: int | None = 2, **kwargs) -> pl.Trainer:
    """A CPU Trainer writing under ``root``: no logger, checkpoints, progress bar or sanity check unless asked."""
    options = dict(
        accelerator="cpu",
        max_epochs=max_epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        num_sanity_val_steps=0,
    )
    options.update(kwargs)
    return pl.Trainer(**options)


class Preempted(pl.Callback):
    """Ends a run after ``epochs`` epochs, as a pre-empted job would."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


class CtrlC(pl.Callback):
    """Presses Ctrl-C (raises ``KeyboardInterrupt``) when training reaches global step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            raise KeyboardInterrupt


def snapshot(module: nn.Module) -> dict:
    """Everything a callback must leave alone: state, gradients, modes and the global RNG."""
    return {
        "state": {k: v.clone() for k, v in module.state_dict().items()},
        "grads": {n: None if p.grad is None else p.grad.clone() for n, p in module.named_parameters()},
        "modes": [m.training for m in module.modules()],
        "rng": torch.get_rng_state(),
    }


def assert_same_snapshot(a: dict, b: dict) -> None:
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        assert torch.equal(a["state"][k], b["state"][k]), k
    for n in a["grads"]:
        assert (a["grads"][n] is None) == (b["grads"][n] is None), n
        assert a["grads"][n] is None or torch.equal(a["grads"][n], b["grads"][n]), n
    assert a["modes"] == b["modes"]
    assert torch.equal(a["rng"], b["rng"])


def ddp_trainer(devices: int, max_steps: int, **kwargs) -> pl.Trainer:
    """A Trainer for "N processes equal one process" runs: DDP on CPU when ``devices > 1``, no automatic sampler.

    Lightning's own DistributedSampler shuffles even when the loader does not: the data must come with each rank's
    shard already chosen (:class:`ShardedData`).
    """
    return trainer(
        None,
        max_epochs=None,
        max_steps=max_steps,
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        use_distributed_sampler=False,
        limit_val_batches=0,
        **kwargs,
    )


class ShardedData(pl.LightningDataModule):
    """``dataset`` in per-device batches, each rank reading its shard of it in order (a non-shuffling sampler)."""

    def __init__(self, dataset: Dataset, batch_size: int) -> None:
        super().__init__()
        self.dataset, self.batch_size = dataset, batch_size

    def train_dataloader(self) -> DataLoader:
        sampler = DistributedSampler(self.dataset, shuffle=False)
        return DataLoader(self.dataset, batch_size=self.batch_size, sampler=sampler)
