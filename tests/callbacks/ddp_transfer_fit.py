"""Runs TransferProbe on two CPU processes; run by test_transfer_probe.py (which loads ``run`` for one process).

The model does not learn (lr 0), so a one-process run sees exactly the same weights and any difference comes from how
the probe shards and gathers the target data. 101 fit and 51 evaluation examples: the non-shuffling
DistributedSampler pads one rank's shard with a repeated example.
"""

import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_sam.callbacks import TransferProbe
from lightning_sam.functional import fit_linear_probe

N_FIT, N_EVAL, NUM_CLASSES = 101, 51, 3


def target_split(n: int, generator: torch.Generator) -> TensorDataset:
    """``(n, 4)`` inputs whose first three columns carry the label, noisily."""
    y = torch.randint(0, NUM_CLASSES, (n,), generator=generator)
    x = torch.randn(n, 4, generator=generator) + 1.5 * F.one_hot(y, 4).float()
    return TensorDataset(x, y)


class TargetDomainDataModule(pl.LightningDataModule):
    """Training data and a held-out ``"target"`` domain with (fit, evaluate) parts."""

    num_classes = NUM_CLASSES
    test_domain = "target"

    def setup(self, stage: str | None = None) -> None:
        generator = torch.Generator().manual_seed(0)
        self.train, self.fit, self.eval = (target_split(n, generator) for n in (64, N_FIT, N_EVAL))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train, batch_size=16)

    def transfer_dataloaders(self) -> tuple[DataLoader, DataLoader]:
        return DataLoader(self.fit, batch_size=16), DataLoader(self.eval, batch_size=16)


class StillClassifier(pl.LightningModule):
    """A body and a linear head trained with lr 0: the weights never move."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
        self.head = nn.Linear(8, NUM_CLASSES)

    def forward(self, x):
        return self.head(self.body(x))

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def run(devices: int, root: Path) -> dict:
    torch.manual_seed(0)
    model, datamodule = StillClassifier(), TargetDomainDataModule()
    probe = TransferProbe()
    trainer = pl.Trainer(
        accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", max_epochs=1,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[probe], default_root_dir=root,
    )  # fmt: skip
    trainer.fit(model, datamodule)
    with torch.no_grad():  # the same probe fitted by hand on the whole target data, in order
        fit_x, fit_y = datamodule.fit.tensors
        eval_x, eval_y = datamodule.eval.tensors
        expected = fit_linear_probe(model.body(fit_x), fit_y, NUM_CLASSES).accuracy(model.body(eval_x), eval_y)
    return {"history": probe.history, "accuracy": probe.accuracy, "expected": expected, "rank": trainer.global_rank}


if __name__ == "__main__":
    out = Path(sys.argv[1])
    result = run(devices=2, root=out)
    torch.save(result, out / f"rank{result['rank']}.pt")
