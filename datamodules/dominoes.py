"""Dominoes: two images stacked vertically, each half predicting the label (CIFAR-MNIST, FMNIST-MNIST).

CIFAR-MNIST (Shah et al. 2020, arXiv 2006.07710) puts an MNIST digit (0 or 1) above a CIFAR-10 image (automobile or
truck); FMNIST-MNIST (Kirichenko et al. 2022, arXiv 2204.02937) pairs MNIST digits 0-4 with FashionMNIST classes
0-4. One generic composition serves both (docs/method.md section 7): a *core* source whose class is the label ``y``
and a *spurious* source whose class agrees with ``y`` in a fraction ``p`` of training examples. The grey sources are
zero-padded from 28x28 to 32x32 and repeated to three channels, so every domino is ``3 x 64 x 32``.

Splits: train and val are a seeded 90/10 split of the sources' training images, both with correlation ``p``; test
re-pairs the sources' test images at random ("MNIST-randomized" and "CIFAR-randomized" in one set, since every
example carries both halves' labels); the probe splits (docs/method.md section 6) re-pair the training split's images
and the test images so that each half's label is independent of the other's.

The sources are torchvision's MNIST, FashionMNIST and CIFAR-10, downloaded with torchvision's own md5-checked code
into a temporary folder that is moved into place only once complete. The selected images and every split's pairing
are built once and cached as tensors in ``root/dominoes/`` (written atomically, loaded with ``weights_only=True``;
delete the file to rebuild it after changing the sources); halves are stacked when an example is read. CIFAR-10's
files are pickles, so torchvision's md5 check of them is kept strict: it is what makes unpickling them safe.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.datasets import CIFAR10, MNIST, FashionMNIST, VisionDataset
from torchvision.datasets.utils import check_integrity
from typing_extensions import override

from lightning_sam.batch import FeatureBatch
from lightning_sam.datamodules._download import require_writable, temporary_folder
from lightning_sam.datamodules.feature_datamodule import FeatureDataModule
from lightning_sam.functional.linear_probe import held_out_split

Source = Literal["mnist", "fmnist", "cifar"]

# The torchvision class behind each source name; the name is also the feature name.
SOURCES: dict[str, type[VisionDataset]] = {"mnist": MNIST, "fmnist": FashionMNIST, "cifar": CIFAR10}
# Folder each torchvision class reads under ``root``.
SOURCE_FOLDERS: dict[str, str] = {"mnist": "MNIST", "fmnist": "FashionMNIST", "cifar": "cifar-10-batches-py"}
# (train, test) image counts of the canonical releases.
SOURCE_SIZES: dict[str, tuple[int, int]] = {
    "mnist": (60_000, 10_000),
    "fmnist": (60_000, 10_000),
    "cifar": (50_000, 10_000),
}
_CACHE_VERSION = 1
# torchvision's raw MNIST/FashionMNIST files: (name, number of dimensions); images (N, 28, 28), labels (N,)
IDX_FILES = (
    ("train-images-idx3-ubyte", 3),
    ("train-labels-idx1-ubyte", 1),
    ("t10k-images-idx3-ubyte", 3),
    ("t10k-labels-idx1-ubyte", 1),
)


def idx_file_problem(path: Path, ndim: int) -> str | None:
    """Why ``path`` is not a uint8 idx file of ``ndim`` dimensions whose size matches its header (``None``: it is).

    torchvision reads these files with bare ``assert`` statements; this says what is wrong instead.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "labels"
        >>> _ = p.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 2, 7, 3]))
        >>> idx_file_problem(p, 1) is None, idx_file_problem(p, 3)
        (True, 'its header declares 1 dimensions, expected 3')
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        header = f.read(4 + 4 * ndim)
    if size == 0:
        return "it is empty"
    if len(header) < 4 or header[:2] != b"\0\0" or header[2] != 0x08:
        return f"it does not start with the idx magic number 0x000008 (got {header[:3].hex() or 'nothing'})"
    if header[3] != ndim:
        return f"its header declares {header[3]} dimensions, expected {ndim}"
    if len(header) < 4 + 4 * ndim:
        return "its header is cut short"
    dims = [int.from_bytes(header[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = 4 + 4 * ndim + int(torch.tensor(dims).prod())
    if size != expected:
        return f"it holds {size} bytes but its header ({' x '.join(map(str, dims))}) needs {expected}: truncated?"
    return None


def correlated_labels(y: Tensor, p: float, num_classes: int, generator: torch.Generator) -> Tensor:
    """Spurious labels that equal ``y`` on exactly ``round(p * n_c)`` of the ``n_c`` examples of each class.

    The other examples of class ``c`` get the remaining classes in turn, so the mismatches are spread evenly; the
    order within each class is shuffled with ``generator``.

    Example:
        >>> y = torch.tensor([0] * 10 + [1] * 10)
        >>> s = correlated_labels(y, 0.8, 2, torch.Generator().manual_seed(0))
        >>> int((s == y).sum()), int((s[y == 0] == 1).sum())
        (16, 2)
        >>> bool((correlated_labels(y, 1.0, 2, torch.Generator()) == y).all())
        True
    """
    s = torch.empty_like(y)
    for c in range(num_classes):
        where = (y == c).nonzero().squeeze(1)
        n = len(where)
        n_match = round(p * n)
        others = torch.tensor([k for k in range(num_classes) if k != c], dtype=y.dtype)
        labels = torch.full((n,), c, dtype=y.dtype)
        if num_classes > 1:
            labels[n_match:] = others[torch.arange(n - n_match) % len(others)]
        s[where] = labels[torch.randperm(n, generator=generator)]
    return s


def independent_labels(y: Tensor, num_classes: int, generator: torch.Generator) -> Tensor:
    """Spurious labels independent of ``y``: within every class of ``y``, each label ``k`` appears equally often (±1).

    Example:
        >>> y = torch.tensor([0] * 6 + [1] * 4)
        >>> s = independent_labels(y, 2, torch.Generator().manual_seed(0))
        >>> [[int(((y == a) & (s == b)).sum()) for b in range(2)] for a in range(2)]
        [[3, 3], [2, 2]]
    """
    s = torch.empty_like(y)
    for c in range(num_classes):
        where = (y == c).nonzero().squeeze(1)
        labels = torch.arange(len(where), dtype=y.dtype) % num_classes
        s[where] = labels[torch.randperm(len(where), generator=generator)]
    return s


def draw_from_pools(labels: Tensor, pools: Sequence[Tensor], generator: torch.Generator) -> Tensor:
    """For each entry of ``labels``, an index from ``pools[label]``, each pool walked in a seeded random order.

    A pool is reused cyclically only when a label needs more images than the pool holds.

    Example:
        >>> pools = [torch.tensor([10, 11]), torch.tensor([20])]
        >>> sorted(draw_from_pools(torch.tensor([0, 1, 0, 1]), pools, torch.Generator()).tolist())
        [10, 11, 20, 20]
    """
    index = torch.empty_like(labels)
    for k, pool in enumerate(pools):
        where = (labels == k).nonzero().squeeze(1)
        if len(where) == 0:
            continue
        if len(pool) == 0:
            raise ValueError(f"no image available for label {k}")
        order = pool[torch.randperm(len(pool), generator=generator)]
        index[where] = order[torch.arange(len(where)) % len(pool)]
    return index


class _DominoesDataset(Dataset[FeatureBatch]):
    """Stacks one spurious and one core image per example, scaled to ``[0, 1]`` floats."""

    def __init__(self, spurious: Tensor, core: Tensor, split: dict[str, Tensor], num_classes: int, top: str) -> None:
        self.spurious_images, self.core_images = spurious, core
        self.spurious_index, self.core_index = split["spurious_index"], split["core_index"]
        self.y, s = split["y"], split["s"]
        # Feature order is (spurious, core), matching feature_names.
        self.features = torch.stack([s, self.y], dim=1)
        self.group = self.y * num_classes + s
        self.spurious_on_top = top == "spurious"

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> FeatureBatch:
        spurious = self.spurious_images[self.spurious_index[index]]
        core = self.core_images[self.core_index[index]]
        halves = (spurious, core) if self.spurious_on_top else (core, spurious)
        # grey halves are stored with one channel; expand() makes the 3-channel view without a copy
        x = torch.cat([half.expand(3, -1, -1) for half in halves], dim=1).float().div_(255)  # (3, 64, 32)
        return FeatureBatch(x, self.y[index], self.features[index], self.group[index])


class DominoesDataModule(FeatureDataModule):
    """A core image (its class is the label) stacked with a spurious image that agrees with it in training.

    ``feature_names`` is ``(spurious, core)``, the easy feature first; ``features`` holds each half's label index
    (its position in ``class_pairs``). Groups are ``y * num_classes + spurious_label`` (``2y + mnist`` on
    CIFAR-MNIST), so ``num_groups = num_classes ** 2``.

    Args:
        root: folder holding torchvision's ``MNIST/``, ``FashionMNIST/`` and ``cifar-10-batches-py/`` (or where they
            will be downloaded); the cache goes to ``root/dominoes/``.
        batch_size: examples per batch.
        num_workers: DataLoader worker processes.
        seed: seeds the val split and every pairing.
        spurious: the source of the spurious half (the easy feature).
        core: the source of the core half, whose class is the label.
        class_pairs: for each label, its ``(spurious class, core class)`` in the sources' own class indices.
        p: fraction of training and val examples whose spurious half shows the label's spurious class.
        spurious_on_top: put the spurious half on top (rows 0-31) and the core half below.
        val_fraction: fraction of the core training images held out for validation.
        download: fetch missing sources with torchvision; otherwise a missing source is an error.
    """

    def __init__(
        self,
        root: str | Path = "data",
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        spurious: Source = "mnist",
        core: Source = "cifar",
        class_pairs: Sequence[tuple[int, int]] = ((0, 1), (1, 9)),
        p: float = 1.0,
        spurious_on_top: bool = True,
        val_fraction: float = 0.1,
        download: bool = True,
    ) -> None:
        super().__init__(root, batch_size, num_workers, seed)
        for name, source in (("spurious", spurious), ("core", core)):
            if source not in SOURCES:
                raise ValueError(f"{type(self).__name__}: {name} must be one of {sorted(SOURCES)}, got {source!r}")
        if spurious == core:
            raise ValueError(f"{type(self).__name__}: spurious and core must be different sources, both are {core!r}")
        pairs = [(int(a), int(b)) for a, b in class_pairs]
        if len(pairs) < 2:
            raise ValueError(
                f"{type(self).__name__}: class_pairs needs at least two (spurious, core) pairs, got {pairs}"
            )
        for position in (0, 1):
            classes = [pair[position] for pair in pairs]
            if len(set(classes)) != len(classes) or min(classes) < 0 or max(classes) > 9:
                raise ValueError(
                    f"{type(self).__name__}: class_pairs must use distinct classes in 0..9 for each source, got {pairs}"
                )
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{type(self).__name__}: p must be in [0, 1], got {p}")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"{type(self).__name__}: val_fraction must be in (0, 1), got {val_fraction}")
        self.spurious, self.core, self.class_pairs = spurious, core, pairs
        self.p, self.spurious_on_top, self.val_fraction, self.download = p, spurious_on_top, val_fraction, download
        self.num_classes = len(pairs)
        self.feature_names = (spurious, core)
        self.num_groups = self.num_classes**2

    @property
    def cache_path(self) -> Path:
        """Where the built pairing is cached; the name hashes every option that changes its contents."""
        key = {
            "version": _CACHE_VERSION,
            "spurious": self.spurious,
            "core": self.core,
            "class_pairs": self.class_pairs,
            "p": self.p,
            "seed": self.seed,
            "val_fraction": self.val_fraction,
        }
        digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
        return self.root / "dominoes" / f"{self.spurious}-{self.core}-{digest}.pt"

    @override
    def prepare_data(self) -> None:
        if self.cache_path.exists():  # the cache holds every image it needs: the sources are not read again
            return
        require_writable(self.cache_path.parent, purpose="the dominoes cache cannot be written")
        for source in (self.spurious, self.core):
            self._ensure_source(source)
        self._write_cache(self._build())

    @override
    def setup(self, stage: str | None = None) -> None:
        if not self.cache_path.exists():  # setup() called without prepare_data(), outside a Trainer
            self.prepare_data()
        try:
            cache = torch.load(self.cache_path, weights_only=True)
        except Exception as error:
            reason = str(error).splitlines()[0]
            raise RuntimeError(
                f"{type(self).__name__}: the cache {self.cache_path} cannot be read ({reason}); delete it and it "
                "will be rebuilt from the sources"
            ) from error
        if not isinstance(cache, dict) or cache.get("version") != _CACHE_VERSION:
            raise RuntimeError(f"{type(self).__name__}: {self.cache_path} is not a cache of this version; delete it")
        top = "spurious" if self.spurious_on_top else "core"
        images = cache["images"]

        def dataset(split: str, source_split: str) -> _DominoesDataset:
            spurious, core = images[f"spurious_{source_split}"], images[f"core_{source_split}"]
            return _DominoesDataset(spurious, core, cache["splits"][split], self.num_classes, top)

        self.train_dataset = dataset("train", "train")
        self.val_dataset = dataset("val", "train")
        self.test_dataset = dataset("test", "test")
        self.probe_train_dataset = dataset("probe_train", "train")
        self.probe_test_dataset = dataset("probe_test", "test")

    def _source_problem(self, source: str) -> str | None:
        """The first file of ``source`` found on disk that is damaged, and how (torchvision only says "corrupted")."""
        folder = self.root / SOURCE_FOLDERS[source]
        if source == "cifar":
            for name, md5 in [*CIFAR10.train_list, *CIFAR10.test_list, [CIFAR10.meta["filename"], CIFAR10.meta["md5"]]]:
                path = folder / name
                if path.is_file() and not check_integrity(str(path), md5):
                    return f"{path} fails its md5 check (expected {md5}): it is corrupt or from another release"
            return None
        counts = {}
        for name, ndim in IDX_FILES:
            path = folder / "raw" / name
            if not path.is_file():
                continue
            problem = idx_file_problem(path, ndim)
            if problem is not None:
                return f"{path} is not a valid idx file: {problem}"
            with open(path, "rb") as f:
                counts[name] = int.from_bytes(f.read(8)[4:], "big")
        for prefix in ("train", "t10k"):
            images, labels = counts.get(f"{prefix}-images-idx3-ubyte"), counts.get(f"{prefix}-labels-idx1-ubyte")
            if images is not None and labels is not None and images != labels:
                return (
                    f"{folder / 'raw' / f'{prefix}-images-idx3-ubyte'} holds {images} images but "
                    f"{prefix}-labels-idx1-ubyte holds {labels} labels: they come from different releases"
                )
        return None

    def _ensure_source(self, source: str) -> None:
        """Checks that torchvision can read ``source`` under ``root``, downloading it first if allowed."""
        cls, folder = SOURCES[source], self.root / SOURCE_FOLDERS[source]
        # the idx headers are checked first (torchvision asserts on them); CIFAR's md5s only once torchvision fails
        problem = self._source_problem(source) if source != "cifar" else None
        if problem is None:
            try:
                for train in (True, False):
                    cls(str(self.root), train=train)
                return
            except (RuntimeError, AssertionError, ValueError, OSError, EOFError) as error:
                # RuntimeError: missing or md5-failed files; the others: torchvision's asserts and readers on bad bytes
                problem = self._source_problem(source) or str(error) or type(error).__name__
        manual = (
            f'To fetch it by hand, run `python -c "from torchvision.datasets import {cls.__name__}; '
            f"{cls.__name__}('{self.root}', download=True)\"` on a machine with internet access and copy "
            f"{folder} here (torchvision's layout: {_layout(source)})."
        )
        if folder.exists():
            raise RuntimeError(
                f"{type(self).__name__}: {folder} exists but torchvision cannot read it ({problem}). It is incomplete "
                f"or corrupt: delete {folder} and run again with download=True to fetch it afresh. {manual}"
            )
        if not self.download:
            raise FileNotFoundError(
                f"{type(self).__name__}: {source} not found under {self.root} and download=False. Pass "
                f"download=True, or point root at the folder that holds {folder.name}/. {manual}"
            )
        require_writable(self.root)
        staging = temporary_folder(self.root, folder.name, ".partial")
        try:
            try:
                for train in (True, False):
                    cls(str(staging), train=train, download=True)
            except Exception as error:
                raise RuntimeError(
                    f"{type(self).__name__}: downloading {source} failed ({error}); nothing was kept. {manual}"
                ) from error
            os.replace(staging / folder.name, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _load_source(self, source: str, train: bool) -> tuple[Tensor, Tensor]:
        """``(N, C, 32, 32)`` uint8 images (``C`` is 1 for the grey sources) and ``(N,)`` class indices."""
        data = SOURCES[source](str(self.root), train=train)
        expected = SOURCE_SIZES[source][0 if train else 1]
        if len(data) != expected:
            warnings.warn(
                f"{type(self).__name__}: {source} {'train' if train else 'test'} has {len(data)} images, the "
                f"canonical release has {expected}; loading it as a subset",
                stacklevel=2,
            )
        images = torch.as_tensor(data.data)
        # grey (N, 28, 28): zero-padded to 32x32, one channel (repeated to 3 when read); CIFAR (N, 32, 32, 3): NCHW
        images = F.pad(images, (2, 2, 2, 2)).unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)
        return images.contiguous(), torch.as_tensor(data.targets).long()

    def _build(self) -> dict:
        generator = torch.Generator().manual_seed(self.seed)
        k = self.num_classes
        images: dict[str, Tensor] = {}
        labels: dict[str, Tensor] = {}
        for role, source, position in (("spurious", self.spurious, 0), ("core", self.core, 1)):
            classes = torch.tensor([pair[position] for pair in self.class_pairs])
            for split, train in (("train", True), ("test", False)):
                x, targets = self._load_source(source, train)
                keep = torch.isin(targets, classes)
                # label index of each kept image: its class's position in class_pairs
                images[f"{role}_{split}"] = x[keep]
                labels[f"{role}_{split}"] = (targets[keep].unsqueeze(1) == classes).long().argmax(1)
                counts = torch.bincount(labels[f"{role}_{split}"], minlength=k)
                if int(counts.min()) < (2 if train else 1):
                    raise ValueError(
                        f"{type(self).__name__}: {source} {split} has {counts.tolist()} images of classes "
                        f"{classes.tolist()}; every class needs at least {2 if train else 1}"
                    )

        def pools(y: Tensor, among: Tensor) -> list[Tensor]:
            return [among[y[among] == c] for c in range(k)]

        def pairing(core: Tensor, spurious_pools: list[Tensor], core_y: Tensor, s: Tensor) -> dict[str, Tensor]:
            spurious = draw_from_pools(s, spurious_pools, generator)
            return {"core_index": core, "spurious_index": spurious, "y": core_y, "s": s}

        # Class-stratified 90/10 split of both sources' training images, so val never shows a training image.
        core_y, spurious_y = labels["core_train"], labels["spurious_train"]
        core_train, core_val = held_out_split(core_y, self.val_fraction, generator, min_held_out=1)
        spurious_train, spurious_val = held_out_split(spurious_y, self.val_fraction, generator, min_held_out=1)

        test_y, test_spurious = labels["core_test"], labels["spurious_test"]
        all_test = torch.arange(len(test_y))
        splits = {
            "train": pairing(
                core_train,
                pools(spurious_y, spurious_train),
                core_y[core_train],
                correlated_labels(core_y[core_train], self.p, k, generator),
            ),
            "val": pairing(
                core_val,
                pools(spurious_y, spurious_val),
                core_y[core_val],
                correlated_labels(core_y[core_val], self.p, k, generator),
            ),
            "test": pairing(
                all_test,
                pools(test_spurious, torch.arange(len(test_spurious))),
                test_y,
                independent_labels(test_y, k, generator),
            ),
            "probe_train": pairing(
                core_train,
                pools(spurious_y, spurious_train),
                core_y[core_train],
                independent_labels(core_y[core_train], k, generator),
            ),
            "probe_test": pairing(
                all_test,
                pools(test_spurious, torch.arange(len(test_spurious))),
                test_y,
                independent_labels(test_y, k, generator),
            ),
        }
        return {"version": _CACHE_VERSION, "images": images, "splits": splits}

    def _write_cache(self, cache: dict) -> None:
        path = self.cache_path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
        os.close(fd)
        try:
            torch.save(cache, tmp)
            os.replace(tmp, path)  # atomic: a crash never leaves a half-written cache under the real name
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)


class CifarMnistDataModule(DominoesDataModule):
    """CIFAR-MNIST (Shah et al. 2020): MNIST 0/1 on top of CIFAR-10 automobile/truck, ``3 x 64 x 32``.

    ``feature_names = ("mnist", "cifar")``; the label is the CIFAR class (automobile 0, truck 1); group
    ``2y + mnist``. See :class:`DominoesDataModule` for the arguments.
    """

    def __init__(
        self,
        root: str | Path = "data",
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        p: float = 1.0,
        spurious_on_top: bool = True,
        val_fraction: float = 0.1,
        download: bool = True,
    ) -> None:
        pairs = ((0, 1), (1, 9))  # (MNIST digit, CIFAR-10 class): 0 & automobile, 1 & truck
        super().__init__(
            root,
            batch_size,
            num_workers,
            seed,
            spurious="mnist",
            core="cifar",
            class_pairs=pairs,
            p=p,
            spurious_on_top=spurious_on_top,
            val_fraction=val_fraction,
            download=download,
        )


class FmnistMnistDataModule(DominoesDataModule):
    """FMNIST-MNIST (Kirichenko et al. 2022): MNIST digit ``c`` on top of FashionMNIST class ``c``, ``c < 5``.

    ``feature_names = ("mnist", "fmnist")``; the label is the FashionMNIST class; group ``5y + mnist``. Pairing class
    ``c`` with ``c`` is our reading of the paper. See :class:`DominoesDataModule` for the arguments.
    """

    def __init__(
        self,
        root: str | Path = "data",
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        p: float = 1.0,
        spurious_on_top: bool = True,
        val_fraction: float = 0.1,
        download: bool = True,
    ) -> None:
        pairs = tuple((c, c) for c in range(5))
        super().__init__(
            root,
            batch_size,
            num_workers,
            seed,
            spurious="mnist",
            core="fmnist",
            class_pairs=pairs,
            p=p,
            spurious_on_top=spurious_on_top,
            val_fraction=val_fraction,
            download=download,
        )


def _layout(source: str) -> str:
    if source == "cifar":
        return "cifar-10-batches-py/data_batch_1..5, test_batch, batches.meta"
    folder = SOURCE_FOLDERS[source]
    return (
        f"{folder}/raw/train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte"
    )
