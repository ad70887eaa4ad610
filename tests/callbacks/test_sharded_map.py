"""Reading fixed splits: a dataset that gathers whole batches is read in one step, and equals the DataLoader's read."""

import torch
from torch.utils.data import Dataset, default_collate

from lightning_sam.callbacks._sharded_map import read_batches
from lightning_sam.datamodules.feature_tensor_dataset import FeatureTensorDataset


class CountingDataset(FeatureTensorDataset):
    """Counts how it is read: per example (``__getitem__``) or per batch (``batch``)."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.items = self.batches = 0

    def __getitem__(self, index):
        self.items += 1
        return super().__getitem__(index)

    def batch(self, indices):
        self.batches += 1
        return super().batch(indices)


class PerExample(Dataset):
    """The same examples without ``batch``: what any map-style dataset offers."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        return self.dataset[index]


def _dataset() -> CountingDataset:
    g = torch.Generator().manual_seed(0)
    n = 10
    return CountingDataset(
        torch.randn(n, 3, generator=g),
        torch.randint(0, 2, (n,), generator=g),
        torch.randint(0, 3, (n, 2), generator=g),
        torch.randint(0, 4, (n,), generator=g),
    )


def test_read_batches_gathers_a_batch_indexable_dataset_in_one_step_as_the_default_collate_would():
    dataset = _dataset()
    chunks = [[7, 0, 3], [9], [1, 2, 5, 4]]
    fast = list(read_batches(dataset, chunks, default_collate))
    assert (dataset.batches, dataset.items) == (3, 0)
    slow = list(read_batches(PerExample(dataset), chunks, default_collate))
    assert dataset.items == 8
    for a, b in zip(fast, slow, strict=True):
        assert type(a) is type(b)
        for field_a, field_b in zip(a, b, strict=True):
            assert field_a.dtype == field_b.dtype
            assert torch.equal(field_a, field_b)


def test_read_batches_reads_per_example_through_a_custom_collate_function():
    dataset = _dataset()
    sizes = list(read_batches(dataset, [[0, 1], [2]], lambda examples: len(examples)))
    assert sizes == [2, 1]
    assert (dataset.batches, dataset.items) == (0, 3)
