"""Base class of every datamodule here: one constructor shape, the batch contract, and probe splits.

Subclasses set ``num_classes``, ``feature_names`` and ``num_groups`` in ``__init__`` (the CLI links
``num_classes`` into the model before anything is loaded), download in ``prepare_data`` only, and in
``setup`` assign ``train_dataset``, ``val_dataset``, optionally ``test_dataset``, and the decorrelated
``probe_train_dataset`` / ``probe_test_dataset`` (docs/method.md section 6), each yielding
:class:`~lightning_sam.batch.FeatureBatch` examples.
"""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from typing_extensions import override

from lightning_sam.datamodules._seeded_epoch_sampler import SeededEpochSampler


class FeatureDataModule(pl.LightningDataModule):
    """Datamodule whose batches carry per-feature labels and group ids.

    Args:
        root: folder that holds (or will hold) the dataset.
        batch_size: examples per batch (per device under DDP).
        num_workers: DataLoader worker processes.
        seed: seeds every split and sampling choice the datamodule makes.
    """

    num_classes: int
    feature_names: tuple[str, ...]
    num_groups: int = 0  # 0: the dataset defines no groups (batch.group is -1)

    def __init__(self, root: str | Path = "data", batch_size: int = 128, num_workers: int = 0, seed: int = 0) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.root = Path(root).expanduser()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.test_dataset: Dataset | None = None
        self.probe_train_dataset: Dataset | None = None
        self.probe_test_dataset: Dataset | None = None

    def _loader(self, dataset: Dataset | None, name: str, shuffle: bool = False) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.{name} is not built: call setup() first (the Trainer does).")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=SeededEpochSampler(dataset, self.seed) if shuffle else None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    @override
    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, "train_dataset", shuffle=True)

    @override
    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, "val_dataset")

    @override
    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, "test_dataset")

    def probe_dataloaders(self) -> tuple[DataLoader, DataLoader]:
        """The (fit, evaluate) loaders of the decorrelated probe splits, unshuffled."""
        return (
            self._loader(self.probe_train_dataset, "probe_train_dataset"),
            self._loader(self.probe_test_dataset, "probe_test_dataset"),
        )

    def train_group_counts(self) -> Tensor:
        """``(num_groups,)`` example counts of the training split, for the training-weighted average accuracy."""
        if self.num_groups == 0:
            raise ValueError(f"{type(self).__name__} defines no groups")
        dataset = self.train_dataset
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.train_dataset is not built: call setup() first.")
        groups = getattr(dataset, "group", None)
        if groups is None:
            groups = torch.stack([dataset[i].group for i in range(len(dataset))])  # type: ignore[arg-type]
        return torch.bincount(groups, minlength=self.num_groups)
