"""Fits a plain module with SharpnessAware on two CPU processes (DDP, gloo) and saves rank zero's parameters.

Run by test_sharpness_aware.py as ``python -m tests.callbacks.ddp_sharpness_aware_fit <out>`` from the repository
root. Each rank reads its own shard through a non-shuffling DistributedSampler (Lightning's own sampler shuffles), so
that the two processes together see exactly the global batches a one-process run sees. No BatchNorm: its batch
statistics are per device, which would make the two runs differ for a reason that has nothing to do with SAM.
"""

import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from lightning_sam.callbacks import SharpnessAware
from tests import tiny

PER_DEVICE_BATCH, STEPS = 8, 4


class Plain(pl.LightningModule):
    """An MLP with automatic optimization and SGD with momentum; knows nothing of SAM."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 16), nn.Tanh())
        self.head = nn.Linear(16, 2)

    def forward(self, x):
        return self.head(self.body(x))

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def toy_data(n: int = 64) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=g)
    return TensorDataset(x, (x[:, 0] + x[:, 1] * x[:, 2] > 0).long())


def make_model() -> Plain:
    torch.manual_seed(0)
    return Plain()


def trainer(devices: int) -> pl.Trainer:
    return tiny.ddp_trainer(devices, STEPS, callbacks=[SharpnessAware(rho=0.5)])


def main(out: Path) -> None:
    model = make_model()
    fit = trainer(devices=2)
    fit.fit(model, tiny.ShardedData(toy_data(), PER_DEVICE_BATCH))
    if fit.is_global_zero:
        torch.save(model.state_dict(), out / "sharpness_aware.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
