"""An in-memory dataset of tensors that yields :class:`~lightning_sam.batch.FeatureBatch` examples."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightning_sam.batch import NO_GROUP, FeatureBatch


class FeatureTensorDataset(Dataset[FeatureBatch]):
    """Rows of ``x``, ``y``, ``features`` (``(N, F)``) and ``group`` as :class:`FeatureBatch` examples.

    Example:
        >>> ds = FeatureTensorDataset(torch.zeros(4, 3), torch.tensor([0, 1, 0, 1]), torch.zeros(4, 2).long())
        >>> len(ds), ds[1].y.item(), ds[1].group.item()
        (4, 1, -1)
    """

    def __init__(self, x: Tensor, y: Tensor, features: Tensor, group: Tensor | None = None) -> None:
        n = len(x)
        if group is None:
            group = torch.full((n,), NO_GROUP, dtype=torch.long)
        for name, t in (("y", y), ("features", features), ("group", group)):
            if len(t) != n:
                raise ValueError(f"{name} has {len(t)} rows but x has {n}")
        if features.ndim != 2:
            raise ValueError(f"features must be (N, F), got shape {tuple(features.shape)}")
        self.x, self.y, self.features, self.group = x, y.long(), features.long(), group.long()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> FeatureBatch:
        return FeatureBatch(self.x[index], self.y[index], self.features[index], self.group[index])

    def batch(self, indices: Sequence[int] | Tensor) -> FeatureBatch:
        """The collated batch of these rows, gathered in one indexing step per field.

        Equal to ``default_collate([self[i] for i in indices])``, without its per-example Python work: the measuring
        callbacks read fixed splits this way every epoch (``lightning_sam.callbacks.protocols.BatchIndexable``).

        Example:
            >>> ds = FeatureTensorDataset(torch.arange(6.0).view(3, 2), torch.tensor([0, 1, 0]), torch.eye(3).long())
            >>> ds.batch([2, 0]).x.tolist(), ds.batch([2, 0]).features.tolist()
            ([[4.0, 5.0], [0.0, 1.0]], [[0, 0, 1], [1, 0, 0]])
        """
        index = torch.as_tensor(indices, dtype=torch.long)
        return FeatureBatch(self.x[index], self.y[index], self.features[index], self.group[index])
