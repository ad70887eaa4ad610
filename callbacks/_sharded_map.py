"""One pass of a function over a whole dataset, split across processes and gathered back in dataset order.

Under DDP every rank reads the shard a non-shuffling ``DistributedSampler`` gives it. That sampler pads the
shards to equal length with repeated indices, so each row travels with its dataset index; after ``all_gather``
the repeats are dropped and the rows sorted by index. The result is identical on every rank and equal to a
one-process pass over the dataset in order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import move_data_to_device
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset, default_collate

from lightning_sam.callbacks.protocols import BatchIndexable


def sharded_map(
    trainer: pl.Trainer, loader: DataLoader, fn: Callable[[Any], Sequence[Tensor]], device: torch.device
) -> list[Tensor]:
    """Applies ``fn`` to every batch of ``loader``'s dataset and concatenates each of its outputs over all ranks.

    The dataset is read in index order with the loader's batch size, collate function and workers (its sampler,
    shuffling included, is not used) and a private generator, so the global RNG is left alone. An iterable
    dataset cannot be sharded: every rank then reads all of it, as the loader gives it.

    Args:
        trainer: gives the world size, the rank and the collectives.
        loader: the data; its dataset must be map-style to be sharded.
        fn: maps a batch already moved to ``device`` to a sequence of tensors with one row per example.
        device: where batches go.

    Returns:
        One tensor per output of ``fn``, ``(N, ...)`` with ``N = len(loader.dataset)``.
    """
    dataset = loader.dataset
    world, rank = trainer.world_size, trainer.global_rank
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
        return _cat([fn(move_data_to_device(batch, device)) for batch in loader])
    if len(dataset) == 0:
        raise ValueError("the dataset is empty")
    if world > 1:
        indices = list(DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False))
    else:
        indices = list(range(len(dataset)))
    batch_size = loader.batch_size or getattr(loader.batch_sampler, "batch_size", None) or 1
    chunks = [indices[start : start + batch_size] for start in range(0, len(indices), batch_size)]
    batches = read_batches(dataset, chunks, loader.collate_fn, loader.num_workers)
    outputs = _cat([fn(move_data_to_device(batch, device)) for batch in batches])
    if world == 1:
        return outputs
    index = torch.tensor(indices, device=outputs[0].device)
    gathered = [trainer.strategy.all_gather(t).flatten(0, 1) for t in [index, *outputs]]  # (world · shard, ...)
    index = gathered[0]
    sorted_index, order = index.sort(stable=True)
    first = torch.ones_like(sorted_index, dtype=torch.bool)
    first[1:] = sorted_index[1:] != sorted_index[:-1]  # the padding repeats are exact copies: keep one
    keep = order[first]
    return [t[keep] for t in gathered[1:]]


def read_batches(
    dataset: Dataset,
    index_batches: list[list[int]],
    collate_fn: Callable[[list[Any]], Any] | None,
    num_workers: int = 0,
) -> Iterator[Any]:
    """The collated batches of ``dataset`` at these lists of indices, in order.

    A :class:`~lightning_sam.callbacks.protocols.BatchIndexable` dataset read with the default collate function
    gathers each batch in one step (on the toy, reading the probe splits this way costs a tenth of a DataLoader's
    per-example indexing and collation); any other goes through a DataLoader with ``collate_fn`` and its workers, and
    a private generator (iterating a DataLoader draws a seed, which must not come from the global RNG).
    """
    if isinstance(dataset, BatchIndexable) and collate_fn in (None, default_collate):
        return (dataset.batch(indices) for indices in index_batches)
    loader = DataLoader(
        dataset,
        batch_sampler=index_batches,
        collate_fn=collate_fn,
        num_workers=num_workers,
        generator=torch.Generator(),
    )
    return iter(loader)


def _cat(per_batch: list[Sequence[Tensor]]) -> list[Tensor]:
    if not per_batch:
        raise ValueError("the loader yielded no batch")
    return [torch.cat(parts) for parts in zip(*per_batch, strict=True)]
