"""Base of the image datasets with a binary label and a binary spurious attribute (CelebA, Waterbirds).

A subclass reads its on-disk metadata into a :class:`GroupedImageTable`; this base turns it into the standard
train/val/test splits with groups ``g = 2 * y + spurious`` (Group DRO convention) and the group-balanced probe
splits that decorrelate the two features (docs/method.md section 6): probe-train drawn from the validation split (or
train), probe-test from the test split, both with equal counts in all four groups.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor
from typing_extensions import override

from lightning_sam.datamodules._download import require_writable
from lightning_sam.datamodules._group_balanced_indices import group_balanced_indices
from lightning_sam.datamodules._split_listing import SPLIT_NAMES
from lightning_sam.datamodules._transforms import image_transform
from lightning_sam.datamodules.feature_datamodule import FeatureDataModule
from lightning_sam.datamodules.image_feature_dataset import ImageFeatureDataset


@dataclass
class GroupedImageTable:
    """Everything a grouped image dataset's metadata says, one row per image.

    Attributes:
        files: path of every image.
        y: ``(N,)`` binary class label.
        spurious: ``(N,)`` binary spurious attribute.
        features: ``(N, F)`` feature labels in the datamodule's ``feature_names`` order.
        split: ``(N,)`` split code, 0 train, 1 val, 2 test.
    """

    files: list[Path]
    y: Tensor
    spurious: Tensor
    features: Tensor
    split: Tensor

    @property
    def group(self) -> Tensor:
        """``(N,)`` group ids ``2 * y + spurious``."""
        return 2 * self.y + self.spurious


class GroupedImageDataModule(FeatureDataModule):
    """Standard splits and group-balanced probe splits of a binary image dataset with a spurious attribute.

    Subclasses set ``feature_names``, implement :meth:`read_table` (and :meth:`download` when the data has a
    public source), and may set ``split_sizes`` to the canonical release's sizes so that a subset found on disk
    loads with a warning.

    Args:
        root: folder that holds (or will hold) the dataset.
        batch_size: examples per batch (per device under DDP).
        num_workers: DataLoader worker processes.
        seed: seeds the probe subsamples and the training shuffle.
        download: fetch the dataset in ``prepare_data`` when it is not found under ``root``.
        image_size: side of the square input (224 for ImageNet-style ResNets, 64 for the small CNN).
        augment: random resized crops and flips on the training split.
        probe_source: the split the probe-train set is drawn from (``"val"`` keeps it disjoint from the data
            the model was trained on).
        probe_per_group: probe examples per group in each probe split; default the smallest group's size.
    """

    num_classes = 2
    num_groups = 4
    split_sizes: tuple[int, int, int] | None = None  # canonical release; None: unknown

    def __init__(
        self,
        root: str | Path = "data",
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        download: bool = False,
        image_size: int = 224,
        augment: bool = False,
        probe_source: Literal["train", "val"] = "val",
        probe_per_group: int | None = None,
    ) -> None:
        super().__init__(root=root, batch_size=batch_size, num_workers=num_workers, seed=seed)
        if image_size < 1:
            raise ValueError(f"{type(self).__name__}: image_size must be >= 1, got {image_size}")
        if probe_source not in ("train", "val"):
            raise ValueError(f"{type(self).__name__}: probe_source must be 'train' or 'val', got {probe_source!r}")
        if probe_per_group is not None and probe_per_group < 1:
            raise ValueError(f"{type(self).__name__}: probe_per_group must be >= 1 or None, got {probe_per_group}")
        self.download = download
        self.image_size = image_size
        self.augment = augment
        self.probe_source = probe_source
        self.probe_per_group = probe_per_group

    def find_folder(self) -> Path | None:
        """The dataset folder found under ``root`` in one of the supported layouts, or ``None``."""
        raise NotImplementedError

    def read_table(self) -> GroupedImageTable:
        """Reads and validates the metadata of the dataset found under ``root``."""
        raise NotImplementedError

    def download_dataset(self) -> None:
        """Fetches, verifies and moves the dataset into place under ``root``."""
        raise NotImplementedError(f"{type(self).__name__} cannot download its data; place it under {self.root}.")

    @override
    def prepare_data(self) -> None:
        if self.download and self.find_folder() is None:
            require_writable(self.root)
            self.download_dataset()

    @override
    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return  # every split is built at once; later stages reuse them
        table = self.read_table()
        self.check_split_sizes(table.split)
        group = table.group
        full = ImageFeatureDataset(table.files, table.y, table.features, group, image_transform(self.image_size))
        train_transform = image_transform(self.image_size, augment=self.augment)
        splits = {}
        for code, name in enumerate(SPLIT_NAMES):
            indices = torch.nonzero(table.split == code).flatten()
            if len(indices) == 0:
                raise ValueError(f"{type(self).__name__}: the {name} split (code {code}) is empty in {self.root}")
            splits[name] = indices
        self.train_dataset = full.subset(splits["train"], transform=train_transform)
        self.val_dataset = full.subset(splits["val"])
        self.test_dataset = full.subset(splits["test"])
        self.probe_train_dataset = full.subset(self._balanced(splits[self.probe_source], group, self.probe_source, 0))
        self.probe_test_dataset = full.subset(self._balanced(splits["test"], group, "test", 1))

    def _balanced(self, indices: Tensor, group: Tensor, split: str, offset: int) -> Tensor:
        try:
            chosen = group_balanced_indices(group[indices], self.num_groups, self.seed + offset, self.probe_per_group)
        except ValueError as e:
            raise ValueError(
                f"{type(self).__name__}: cannot draw a group-balanced probe set from the {split} split: {e}. "
                "Every group (2 * y + spurious) needs examples there; lower probe_per_group or use the full data."
            ) from e
        return indices[chosen]

    def check_split_sizes(self, split: Tensor) -> None:
        """Warns when the split sizes differ from the canonical release (a subset on disk loads anyway)."""
        if self.split_sizes is None:
            return
        sizes = tuple(int((split == code).sum()) for code in range(len(SPLIT_NAMES)))
        if sizes != self.split_sizes:
            rank_zero_warn(
                f"{type(self).__name__}: found train/val/test sizes {sizes} under {self.root}, but the full release "
                f"has {self.split_sizes}; loading this subset as it is."
            )
