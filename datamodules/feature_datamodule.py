"""Base class of every datamodule here: one constructor shape, the batch contract, and probe splits.

Subclasses set ``num_classes``, ``feature_names`` and ``num_groups`` in ``__init__`` (the CLI links
``num_classes`` into the model before anything is loaded), download in ``prepare_data`` only, and in
``setup`` assign ``train_dataset``, ``val_dataset``, optionally ``test_dataset``, and the decorrelated
``probe_train_dataset`` / ``probe_test_dataset`` (docs/method.md section 6), each yielding
:class:`~lightning_sam.batch.FeatureBatch` examples.
"""

from __future__ import annotations

from collections.abc import Sized
from pathlib import Path
from typing import cast

import pytorch_lightning as pl
import torch
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from pytorch_lightning.strategies import DDPStrategy, DeepSpeedStrategy
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler
from typing_extensions import override

from lightning_sam.datamodules._seeded_epoch_sampler import SeededEpochSampler
from lightning_sam.datamodules.image_feature_dataset import UnreadableImageError, unreadable_images


class FeatureDataModule(pl.LightningDataModule):
    """Datamodule whose batches carry per-feature labels and group ids.

    Args:
        root: folder that holds (or will hold) the dataset.
        batch_size: examples per batch (per device under DDP); evaluation and probe batches hold
            ``max(batch_size, evaluation_batch_size)``, where a subclass sets ``evaluation_batch_size`` (the toy's
            constructor takes it).
        num_workers: DataLoader worker processes.
        seed: seeds every split and sampling choice the datamodule makes.
    """

    num_classes: int
    feature_names: tuple[str, ...]
    num_groups: int = 0  # 0: the dataset defines no groups (batch.group is -1)
    reads_root: bool = True  # False for generated data, whose root is unused
    # examples per batch in validation, test and the probes' passes, which keep no activations for a backward, when
    # that is more than batch_size: a dataset of tiny examples sets it (on the toy, reading the probe splits in
    # batches of 128 took four times as long as in one batch: a tenth of every epoch went to the probes' reads)
    evaluation_batch_size: int = 0

    def __init__(self, root: str | Path = "data", batch_size: int = 128, num_workers: int = 0, seed: int = 0) -> None:
        super().__init__()
        name = type(self).__name__
        if isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"{name}: batch_size must be >= 1 (examples per batch), got {batch_size!r}")
        if isinstance(num_workers, bool) or num_workers < 0:
            raise ValueError(f"{name}: num_workers must be >= 0 (0 loads in the main process), got {num_workers!r}")
        self.root = Path(root).expanduser()
        if self.reads_root and self.root.exists() and not self.root.is_dir():
            raise ValueError(
                f"{name}: root={str(root)!r} is a file, not a folder. Pass the folder that holds (or will receive) "
                f"the dataset, e.g. --data.init_args.root {self.root.parent}"
            )
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.test_dataset: Dataset | None = None
        self.probe_train_dataset: Dataset | None = None
        self.probe_test_dataset: Dataset | None = None

    def _loader(self, dataset: Dataset | None, name: str, shuffle: bool = False, shard: bool = False) -> DataLoader:
        """A training loader (``shuffle``) or an evaluation one, this rank's share of the split where ``shard``."""
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.{name} is not built: call setup() first (the Trainer does).")
        sampler: Sampler | None = None
        if shuffle:
            sampler = SeededEpochSampler(cast(Sized, dataset), self.seed)
        elif shard:
            sampler = self._evaluation_shard(cast(Sized, dataset))
        return DataLoader(
            dataset,
            batch_size=self.batch_size if shuffle else max(self.batch_size, self.evaluation_batch_size),
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    @override
    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, "train_dataset", shuffle=True)

    def _evaluation_shard(self, dataset: Sized) -> Sampler | None:
        """Under DDP, this rank's share of an evaluation split: examples ``rank, rank + W, ...``, none repeated.

        Lightning's own DistributedSampler pads the ranks' shares to equal length with repeated examples, which the
        synced validation and test metrics (losses, accuracies, group accuracies) would count twice; unpadded, they
        are those of one process. Ranks may then run one batch more or less, which DDP's evaluation allows (it syncs
        buffers at most before the first evaluation batch, which every rank has). Not so where every forward is a
        collective (ModelParallelStrategy, FSDP and DeepSpeed gather the parameters): a rank with an extra batch
        would wait forever for the others, so there, and for a split smaller than the world (some rank would get
        nothing), the sharding is left to Lightning, repeats included.
        """
        trainer = self.trainer
        if trainer is None or trainer.world_size == 1 or len(dataset) < trainer.world_size:
            return None
        if not isinstance(trainer.strategy, DDPStrategy) or isinstance(trainer.strategy, DeepSpeedStrategy):
            return None
        return UnrepeatedDistributedSampler(
            dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
        )

    @override
    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, "val_dataset", shard=True)

    @override
    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, "test_dataset", shard=True)

    def probe_dataloaders(self) -> tuple[DataLoader, DataLoader]:
        """The (fit, evaluate) loaders of the decorrelated probe splits, unshuffled."""
        return (
            self._loader(self.probe_train_dataset, "probe_train_dataset"),
            self._loader(self.probe_test_dataset, "probe_test_dataset"),
        )

    def check_files(self, num_threads: int = 4) -> int:
        """Reads every image file of every split once and reports all unreadable ones together, before training.

        Builds the splits first (``setup``) if needed; ``prepare_data`` (the download) is the caller's to run.
        Datasets held in memory (generated, or cached tensors) have no files: ``setup`` has already read them.

        Args:
            num_threads: files decoded at once.

        Returns:
            The number of image files checked.

        Raises:
            UnreadableImageError: one or more files are corrupt, truncated, empty, not images, or larger than
                PIL's decompression-bomb limit; the message lists every one with the reason and the fix.
        """
        if self.train_dataset is None:
            self.setup("fit")
        splits = (self.train_dataset, self.val_dataset, self.test_dataset)
        probes = (self.probe_train_dataset, self.probe_test_dataset)
        files = sorted({Path(f) for ds in (*splits, *probes) for f in getattr(ds, "files", ())})
        bad = unreadable_images(files, num_threads)
        if bad:
            listing = "\n".join(f"  {why}" for _, why in bad)
            raise UnreadableImageError(
                f"{type(self).__name__}: {len(bad)} of the {len(files)} image files under {self.root} cannot be "
                f"read:\n{listing}\nReplace them with the release's files (or delete the dataset folder and get it "
                "again) before training."
            )
        return len(files)

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
