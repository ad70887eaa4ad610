"""Fits SAMClassifier on two CPU processes (DDP, gloo) and saves rank zero's parameters.

test_sam_classifier_ddp.py runs ``python -m tests.lightning_sam.ddp_fit <out>`` from the repository root. Each rank
reads its own shard through a non-shuffling DistributedSampler, so that the two processes together see exactly the
global batches a one-process run sees.
"""

import sys
from pathlib import Path

import pytorch_lightning as pl
import torch

from lightning_sam import SAMClassifier
from lightning_sam.bodies import TwoBranchMLP
from lightning_sam.datamodules.feature_tensor_dataset import FeatureTensorDataset
from tests import tiny

RUNS = {"lsam-global": ("lsam", "global"), "sam-global": ("sam", "global"), "sam-local": ("sam", "local")}
PER_DEVICE_BATCH, STEPS = 8, 4


def toy_data(n: int = 64) -> FeatureTensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=g)
    y = (x[:, 0] + x[:, 1] * x[:, 2] > 0).long()
    return FeatureTensorDataset(x, y, torch.stack([y, y], dim=1))


def make_model(optimizer: str, perturbation: str) -> SAMClassifier:
    torch.manual_seed(0)
    return SAMClassifier(
        TwoBranchMLP(hidden=16), optimizer=optimizer, rho=0.5, perturbation=perturbation, lr=0.1, lr_schedule="constant"
    )


def trainer(devices: int) -> pl.Trainer:
    return tiny.ddp_trainer(devices, STEPS)


def main(out: Path) -> None:
    for name, (optimizer, perturbation) in RUNS.items():
        model = make_model(optimizer, perturbation)
        fit = trainer(devices=2)
        fit.fit(model, tiny.ShardedData(toy_data(), PER_DEVICE_BATCH))
        if fit.is_global_zero:
            torch.save(model.state_dict(), out / f"{name}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
