"""A shuffling sampler whose order is a function of ``(seed, epoch)`` alone.

A resumed run then sees the same batches as an uninterrupted one (Lightning calls ``set_epoch`` before every epoch,
also after a restore).
"""

from __future__ import annotations

from collections.abc import Iterator, Sized

import torch
from torch.utils.data import Sampler


class SeededEpochSampler(Sampler[int]):
    """A random permutation of ``range(len(data_source))`` drawn from ``seed + epoch``.

    Example:
        >>> sampler = SeededEpochSampler(range(5), seed=0)
        >>> first = list(sampler)
        >>> sampler.set_epoch(1); second = list(sampler)
        >>> sampler.set_epoch(0); list(sampler) == first != second
        True
    """

    def __init__(self, data_source: Sized, seed: int = 0) -> None:
        self.data_source = data_source
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.data_source)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(len(self.data_source), generator=generator).tolist())
