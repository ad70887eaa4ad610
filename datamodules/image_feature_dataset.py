"""A dataset of image files with per-example labels, feature labels and groups, read lazily from disk.

An image that cannot be read (corrupt, truncated, empty, not an image, or larger than PIL's decompression-bomb
limit) raises :class:`UnreadableImageError` naming the file and what to do, instead of PIL's bare error from deep
inside a DataLoader worker; :func:`unreadable_images` reads a whole list once and reports every such file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from lightning_sam.batch import FeatureBatch


class UnreadableImageError(RuntimeError):
    """An image file could not be decoded; the message names the file(s) and the fix."""


def _describe(path: Path, error: BaseException) -> str:
    """Why ``path`` cannot be read, in words, with what to do about it."""
    if isinstance(error, Image.DecompressionBombError):
        return (
            f"{path}: {error} PIL refuses images over twice PIL.Image.MAX_IMAGE_PIXELS (now {Image.MAX_IMAGE_PIXELS}), "
            "its guard against 'decompression bomb' files; replace it with the release's file, or, if you trust it, "
            "raise PIL.Image.MAX_IMAGE_PIXELS before training"
        )
    size = path.stat().st_size if path.is_file() else None
    what = (
        "it is empty (0 bytes)"
        if size == 0
        else f"it is corrupt, truncated or not an image ({type(error).__name__}: {error})"
    )
    return f"{path}: {what}; replace it with the release's file (or delete the dataset folder and get it again)"


def load_rgb(path: Path) -> Image.Image:
    """The image at ``path`` as a fully decoded RGB PIL image.

    Raises:
        UnreadableImageError: the file is corrupt, truncated, empty, not an image, or a "decompression bomb";
            the message names the file and the fix.
    """
    try:
        with Image.open(path) as image:
            return image.convert("RGB")  # decodes every pixel: a truncated file fails here, not later
    except FileNotFoundError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        # PIL raises OSError (UnidentifiedImageError, "image file is truncated"), SyntaxError (bad PNG chunks) or
        # ValueError for broken files; DecompressionBombError above twice MAX_IMAGE_PIXELS (a warning below that)
        raise UnreadableImageError(f"Cannot read image {_describe(Path(path), e)}.") from e


def unreadable_images(files: Iterable[Path], num_threads: int = 1) -> list[tuple[Path, str]]:
    """Reads every file once and returns ``(path, reason)`` for each that cannot be decoded, in input order.

    Args:
        files: the image files.
        num_threads: files decoded at once (decoding releases the GIL; reading is I/O bound).

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> Image.new("RGB", (4, 4)).save(d / "good.png")
        >>> _ = (d / "bad.jpg").write_bytes(b"not a jpeg")
        >>> [(p.name, "corrupt" in why) for p, why in unreadable_images([d / "good.png", d / "bad.jpg"])]
        [('bad.jpg', True)]
    """

    def problem(path: Path) -> str | None:
        try:
            load_rgb(path)
        except (UnreadableImageError, OSError) as e:
            return str(e)
        return None

    files = list(files)
    if num_threads > 1:
        with ThreadPoolExecutor(num_threads) as pool:
            problems = list(pool.map(problem, files))
    else:
        problems = [problem(p) for p in files]
    return [(p, why) for p, why in zip(files, problems) if why is not None]


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
        rgb = load_rgb(self.files[index])
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
