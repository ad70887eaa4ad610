"""A dataset of image files with per-example labels, feature labels and groups, read lazily from disk."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from lightning_sam.batch import FeatureBatch


class ImageFeatureDataset(Dataset[FeatureBatch]):
    """Image files as :class:`~lightning_sam.batch.FeatureBatch` examples; labels live in memory as tensors.

    Args:
        files: path of every image.
        y: ``(N,)`` class labels.
        features: ``(N, F)`` feature labels, in the datamodule's ``feature_names`` order.
        group: ``(N,)`` group ids.
        transform: maps a PIL RGB image to the input tensor.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "a.jpg"
        >>> Image.new("RGB", (8, 8)).save(p)
        >>> ds = ImageFeatureDataset([p], torch.tensor([1]), torch.tensor([[0, 1]]), torch.tensor([2]))
        >>> ex = ds[0]
        >>> tuple(ex.x.shape), ex.y.item(), ex.features.tolist(), ex.group.item()
        ((3, 8, 8), 1, [0, 1], 2)
    """

    def __init__(
        self,
        files: Sequence[Path],
        y: Tensor,
        features: Tensor,
        group: Tensor,
        transform: Callable[[Image.Image], Tensor] | None = None,
    ) -> None:
        n = len(files)
        for name, t in (("y", y), ("features", features), ("group", group)):
            if len(t) != n:
                raise ValueError(f"{name} has {len(t)} rows but there are {n} files")
        self.files = list(files)
        self.y, self.features, self.group = y.long(), features.long(), group.long()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> FeatureBatch:
        with Image.open(self.files[index]) as image:
            rgb = image.convert("RGB")
        x = self.transform(rgb) if self.transform is not None else _to_tensor(rgb)
        return FeatureBatch(x, self.y[index], self.features[index], self.group[index])

    def subset(self, indices: Tensor, transform: Callable[[Image.Image], Tensor] | None = None) -> ImageFeatureDataset:
        """The examples at ``indices`` as a new dataset (keeping this one's transform unless one is given)."""
        idx = indices.long()
        return ImageFeatureDataset(
            [self.files[i] for i in idx.tolist()],
            self.y[idx],
            self.features[idx],
            self.group[idx],
            transform if transform is not None else self.transform,
        )


def _to_tensor(image: Image.Image) -> Tensor:
    """``(3, H, W)`` float tensor in ``[0, 1]``, for datasets built without a transform."""
    data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return data.view(image.height, image.width, 3).permute(2, 0, 1).float().div(255)
