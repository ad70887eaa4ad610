"""A fixed, seeded subset of the training set, read the same way at every epoch (this rank's share of it)."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset

from lightning_sam.callbacks.protocols import TrainData


def fixed_subset_loader(
    trainer: pl.Trainer, num_examples: int, batch_size: int | None, seed: int, dataset: Dataset | None = None
) -> DataLoader:
    """A loader over ``num_examples`` training examples chosen once by ``seed``, split across ranks.

    The dataset is ``dataset``, else the datamodule's ``train_dataset``, else the training loader's dataset; the
    batch size defaults to the training loader's, and its collate function is kept. Rank ``r`` of ``W`` reads
    chosen examples ``r, r + W, ...`` (no example twice), in batches drawn with a private generator.
    """
    train_loader = trainer.train_dataloader
    if dataset is None and isinstance(trainer.datamodule, TrainData):
        dataset = trainer.datamodule.train_dataset
    if dataset is None and isinstance(train_loader, DataLoader):
        dataset = train_loader.dataset
    if dataset is None or isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
        raise ValueError(
            "no map-style training dataset to draw the fixed examples from: pass dataset=... to the callback"
        )
    if batch_size is None:
        batch_size = getattr(train_loader, "batch_size", None) or 128
    chosen = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:num_examples]
    chosen = chosen.sort().values[trainer.global_rank :: trainer.world_size]
    collate_fn = train_loader.collate_fn if isinstance(train_loader, DataLoader) else None
    return DataLoader(
        Subset(dataset, chosen.tolist()),
        batch_size=batch_size,
        shuffle=False,
        collate_fn=collate_fn,
        generator=torch.Generator(),
    )
