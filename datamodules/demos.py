r"""Tiny copies of every dataset here, written in the exact on-disk format of its release, for tests and smoke runs.

Each ``write_tiny_<dataset>(root)`` writes a handful of small images and the release's own metadata files (names,
columns, separators, folder layout; see ``docs/data_formats.md``) under a data root, where the datamodule reads them
as it reads the real data. Try a config without the data::

    python -c "from lightning_sam.datamodules.demos import write_tiny_waterbirds; write_tiny_waterbirds('/tmp/wb')"
    python train.py --config configs/waterbirds.yaml --data.root /tmp/wb --trainer.fast_dev_run true \
        --model.body.init_args.pretrained false

The counts are far from the canonical releases', so the datamodules load these copies with a "subset" warning.
torchvision checks CIFAR-10's files against the real release's md5 sums: :func:`patch_cifar_md5` points that check
at the tiny files (the loader itself is unchanged).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import pickle
import random
import struct
import tarfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from PIL import Image
from torchvision.datasets import CIFAR10

from lightning_sam.datamodules.celeba import CELEBA_ATTRIBUTES as _CELEBA_ATTRIBUTES
from lightning_sam.datamodules.domainbed import DATASETS

if TYPE_CHECKING:
    import pytest

# (y, place) group sizes per split, group order 2 * y + place; val/test balance backgrounds within each class
TINY_WATERBIRDS_COUNTS = {0: (6, 3, 2, 5), 1: (4, 4, 2, 2), 2: (5, 5, 3, 3)}
_SPECIES = {
    0: ("010.Red_winged_Blackbird", "026.Bronzed_Cowbird"),
    1: ("001.Black_footed_Albatross", "059.California_Gull"),
}
_PLACES = {0: ("/b/bamboo_forest", "/f/forest/broadleaf"), 1: ("/o/ocean", "/l/lake/natural")}


def write_tiny_waterbirds(
    root: str | Path,
    layout: Literal["original", "wilds"] = "original",
    counts: dict[int, tuple[int, int, int, int]] | None = None,
    seed: int = 0,
) -> Path:
    """Writes ``<root>/waterbird_complete95_forest2water2/`` (or ``<root>/waterbirds_v1.0/``) with 8x8 JPEGs.

    The release's ``metadata.csv`` header and columns, CUB-style image paths and Places-style ``place_filename``.

    Args:
        root: the data root.
        layout: the original release's folder name, or WILDS' (which adds an empty ``RELEASE_v1.0.txt``).
        counts: images per group ``2 * y + place`` for each split code (0 train, 1 val, 2 test).
        seed: seeds the image colours and the row order.

    Returns:
        The dataset folder.
    """
    counts = TINY_WATERBIRDS_COUNTS if counts is None else counts
    folder = Path(root) / ("waterbird_complete95_forest2water2" if layout == "original" else "waterbirds_v1.0")
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    rows = []
    for split, sizes in sorted(counts.items()):
        for group, size in enumerate(sizes):
            y, place = divmod(group, 2)
            rows += [(y, split, place)] * size
    rng.shuffle(rows)
    with open(folder / "metadata.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["img_id", "img_filename", "y", "split", "place", "place_filename"])
        for img_id, (y, split, place) in enumerate(rows, start=1):
            species = _SPECIES[y][img_id % 2]
            name = species.split(".", 1)[1].title().replace("-", "_")
            img_filename = f"{species}/{name}_{img_id:04d}_{100 + img_id}.jpg"
            (folder / species).mkdir(exist_ok=True)
            colour = tuple(rng.randrange(256) for _ in range(3))
            Image.new("RGB", (8, 8), colour).save(folder / img_filename, format="JPEG")
            place_filename = f"{_PLACES[place][img_id % 2]}/{img_id:08d}.jpg"
            writer.writerow([img_id, img_filename, y, split, place, place_filename])
    if layout == "wilds":
        (folder / "RELEASE_v1.0.txt").touch()
    return folder


def write_tarball(
    archive: str | Path,
    folder: str | Path,
    top: str,
    symlinks: Mapping[str, str] | None = None,
    hardlinks: Mapping[str, str] | None = None,
) -> Path:
    """Packs ``folder`` as ``top/...`` into the tar (gzip when the name ends ``.gz``) ``archive``, plus link members.

    The extra members are what a hostile or broken archive holds: ``symlinks`` maps a member name to a symlink
    target (relative to the link's folder), ``hardlinks`` a member name to a hard link target (relative to the
    archive root), e.g. ``{f"{top}/y": ".."}``, which escapes the destination once ``top`` is stripped.

    Returns:
        ``archive``.
    """
    archive = Path(archive)
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz" if archive.name.endswith(".gz") else "w") as tf:
        tf.add(folder, arcname=top)
        for links, kind in ((symlinks or {}, tarfile.SYMTYPE), (hardlinks or {}, tarfile.LNKTYPE)):
            for name, target in links.items():
                info = tarfile.TarInfo(name)
                info.type, info.linkname = kind, target
                tf.addfile(info)
    return archive


def write_tiny_waterbirds_tarball(
    archive: str | Path, symlinks: Mapping[str, str] | None = None, hardlinks: Mapping[str, str] | None = None
) -> Path:
    """Writes the tiny Waterbirds as the release's tarball (top folder ``waterbird_complete95_forest2water2/``).

    Args:
        archive: the ``.tar.gz`` to write; the images are staged in a sibling folder ``<archive>.source/``.
        symlinks: extra symlink members (see :func:`write_tarball`), e.g. a hostile one.
        hardlinks: extra hard link members.

    Returns:
        ``archive``.
    """
    archive = Path(archive)
    folder = write_tiny_waterbirds(archive.with_name(archive.name + ".source"))
    return write_tarball(archive, folder, folder.name, symlinks, hardlinks)


def damage_file(path: str | Path, how: Literal["garbage", "truncated", "empty", "huge"]) -> Path:
    """Damages a file the way real downloads and disks do, for tests of the error messages.

    ``garbage`` replaces it with bytes that are no image (or idx/pickle) format; ``truncated`` keeps its first half
    (for a JPEG, the headers but not all the pixel data); ``empty`` leaves 0 bytes; ``huge`` replaces an image with
    a 1-bit PNG header declaring 14000 x 14000 pixels (196 M, more than twice PIL's default
    ``Image.MAX_IMAGE_PIXELS``) and no pixel data: what a "decompression bomb" looks like to ``Image.open``.

    Returns:
        ``path``.
    """
    path = Path(path)
    data = path.read_bytes() if path.exists() else b""
    if how == "garbage":
        path.write_bytes(b"<html>Google Drive quota exceeded</html>\n" * 4)
    elif how == "truncated":
        path.write_bytes(data[: max(1, len(data) // 2)])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "huge":

        def chunk(kind: bytes, body: bytes) -> bytes:
            return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

        header = struct.pack(">IIBBBBB", 14000, 14000, 1, 0, 0, 0, 0)  # width, height, 1 bit, grey
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    else:
        raise ValueError(f"how must be 'garbage', 'truncated', 'empty' or 'huge', got {how!r}")
    return path


# line 2 of list_attr_celeba.txt as released: the 40 attribute names
CELEBA_ATTRIBUTES = list(_CELEBA_ATTRIBUTES)
CELEBA_HEADER = " ".join(CELEBA_ATTRIBUTES)
# (Blond_Hair, Male) group sizes per partition, group order 2 * blond + male; blond males are the rarest
TINY_CELEBA_COUNTS = {0: (6, 5, 4, 2), 1: (3, 3, 2, 2), 2: (3, 3, 2, 2)}
_LANDMARKS = "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y"


def write_tiny_celeba(
    root: str | Path,
    layout: Literal["torchvision", "csv", "kaggle"] = "torchvision",
    counts: dict[int, tuple[int, int, int, int]] | None = None,
    seed: int = 0,
) -> Path:
    """Writes a tiny CelebA under ``root`` with 9x11 JPEGs and returns its folder.

    The torchvision layout ``<root>/celeba/`` has all five official txt files (count and header lines, values
    right-aligned in runs of spaces, as released); the CSV variant is WILDS' ``<root>/celebA_v1.0/``.

    Args:
        root: the data root.
        layout: ``"torchvision"`` (``celeba/``, txt files), ``"csv"`` (``celebA_v1.0/``, WILDS), or ``"kaggle"``
            (the CSV files with Kaggle's doubled ``img_align_celeba/img_align_celeba/``).
        counts: images per group ``2 * Blond_Hair + Male`` for each partition code (0 train, 1 valid, 2 test).
        seed: seeds the other attributes and the image colours.
    """
    counts = TINY_CELEBA_COUNTS if counts is None else counts
    folder = Path(root) / ("celeba" if layout == "torchvision" else "celebA_v1.0")
    images = folder / "img_align_celeba"
    if layout == "kaggle":
        images = images / "img_align_celeba"
    images.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    blond, male = CELEBA_ATTRIBUTES.index("Blond_Hair"), CELEBA_ATTRIBUTES.index("Male")
    rows: list[tuple[str, int, list[int]]] = []  # (file, partition, 40 values), partitions in file order as released
    for partition, sizes in sorted(counts.items()):
        groups = [g for g, size in enumerate(sizes) for _ in range(size)]
        rng.shuffle(groups)
        for g in groups:
            values = [rng.choice((-1, 1)) for _ in CELEBA_ATTRIBUTES]
            values[blond], values[male] = (1 if g >= 2 else -1), (1 if g % 2 else -1)
            rows.append((f"{len(rows) + 1:06d}.jpg", partition, values))
    for name, _, _ in rows:
        colour = tuple(rng.randrange(256) for _ in range(3))
        Image.new("RGB", (9, 11), colour).save(images / name, format="JPEG")
    if layout == "torchvision":
        _write_celeba_txt(folder, rows, rng)
    else:
        with open(folder / "list_attr_celeba.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image_id", *CELEBA_ATTRIBUTES])
            writer.writerows([name, *values] for name, _, values in rows)
        with open(folder / "list_eval_partition.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image_id", "partition"])
            writer.writerows([name, partition] for name, partition, _ in rows)
    return folder


def _write_celeba_txt(folder: Path, rows: list[tuple[str, int, list[int]]], rng: random.Random) -> None:
    n = len(rows)
    with open(folder / "list_attr_celeba.txt", "w") as f:
        f.write(f"{n}\n{CELEBA_HEADER} \n")
        for name, _, values in rows:
            f.write(name + " " + " ".join(f"{v:2d}" for v in values) + "\n")  # "-1  1": runs of spaces
    with open(folder / "list_eval_partition.txt", "w") as f:
        f.writelines(f"{name} {partition}\n" for name, partition, _ in rows)
    with open(folder / "identity_CelebA.txt", "w") as f:
        f.writelines(f"{name} {rng.randrange(1, 10178)}\n" for name, _, _ in rows)
    with open(folder / "list_bbox_celeba.txt", "w") as f:
        f.write(f"{n}\nimage_id x_1 y_1 width height\n")
        f.writelines(
            f"{name:<20}{rng.randrange(200):>4}{rng.randrange(200):>4}{200:>4}{250:>4}\n" for name, _, _ in rows
        )
    with open(folder / "list_landmarks_align_celeba.txt", "w") as f:
        f.write(f"{n}\n{_LANDMARKS}\n")
        f.writelines(name + "".join(f"{rng.randrange(60, 120):>6}" for _ in range(10)) + "\n" for name, _, _ in rows)


# OfficeHome's 65 classes are not listed in the code; the tiny copy uses a few real ones
OFFICE_HOME_CLASSES = ("Alarm_Clock", "Backpack", "Bike")


def write_tiny_domainbed(
    root: str | Path,
    dataset: str = "PACS",
    per_class: int = 5,
    lacking: tuple[tuple[str, str], ...] = (),
    classes: tuple[str, ...] | None = None,
    hidden: bool = True,
) -> Path:
    """Writes ``<root>/<folder>/<domain>/<class>/<image>`` with ``per_class`` 8x8 images per (domain, class).

    Images alternate JPEG and PNG. With ``hidden``, ``.ipynb_checkpoints`` folders holding an image are added at
    the dataset, domain and class levels (Jupyter leaves them everywhere), plus a ``.DS_Store`` file.

    Args:
        root: the data root.
        dataset: a DomainBed dataset name (``PACS``, ``VLCS``, ``OfficeHome``, ``TerraIncognita``).
        per_class: images per (domain, class).
        lacking: ``(domain, class)`` folders to leave out.
        classes: the class folders; default the dataset's classes (three real ones for OfficeHome).
        hidden: add hidden folders and files, which the datamodule must skip.

    Returns:
        The dataset folder.
    """
    spec = DATASETS[dataset]
    classes = classes or spec.classes or OFFICE_HOME_CLASSES
    folder = Path(root) / spec.folder
    for d, domain in enumerate(spec.domains):
        for c, name in enumerate(classes):
            if (domain, name) in lacking:
                continue
            class_dir = folder / domain / name
            class_dir.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                suffix = "jpg" if i % 2 == 0 else "png"
                Image.new("RGB", (8, 8), (40 * d, 20 * c, 10 * i)).save(class_dir / f"pic_{i:03d}.{suffix}")
    if hidden:
        first_domain, first_class = spec.domains[0], classes[0]
        for hidden_dir in (
            folder / ".ipynb_checkpoints",
            folder / first_domain / ".ipynb_checkpoints",
            folder / first_domain / first_class / ".ipynb_checkpoints",
        ):
            hidden_dir.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8)).save(hidden_dir / "pic_000-checkpoint.jpg")
        (folder / first_domain / ".DS_Store").write_bytes(b"\0")
    return folder


# Every image is one constant grey level that encodes its class, pixel_value(source, c), so that a test can read
# back which class each half of a domino shows.
CIFAR_BATCHES = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"]
CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
_OFFSET = {"mnist": 10, "fmnist": 12, "cifar": 14}


def pixel_value(source: str, c: int) -> int:
    """The grey level of every pixel of a tiny ``source`` image of class ``c``.

    Example:
        >>> pixel_value("mnist", 1), class_of("mnist", pixel_value("mnist", 1) / 255)
        (30, 1)
    """
    return _OFFSET[source] + 20 * c


def class_of(source: str, value: float) -> int:
    """Inverse of :func:`pixel_value` for a pixel read back as a ``[0, 1]`` float."""
    return round((round(value * 255) - _OFFSET[source]) / 20)


def _labels(per_class: int) -> np.ndarray:
    return np.repeat(np.arange(10), per_class).astype(np.uint8)


def _idx_bytes(array: np.ndarray) -> bytes:
    """An array as an idx (SN3 "Pascal Vincent") file: magic ``0x0000 08 ndim``, big-endian dims, uint8 data."""
    header = struct.pack(">I", 0x0800 + array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _mnist_files(source: str, train_per_class: int, test_per_class: int) -> dict[str, bytes]:
    """The four raw idx files of MNIST (``source="mnist"``) or FashionMNIST, by torchvision's file names."""
    files = {}
    for prefix, per_class in (("train", train_per_class), ("t10k", test_per_class)):
        labels = _labels(per_class)
        images = np.stack([np.full((28, 28), pixel_value(source, int(c)), dtype=np.uint8) for c in labels])
        files[f"{prefix}-images-idx3-ubyte"] = _idx_bytes(images)
        files[f"{prefix}-labels-idx1-ubyte"] = _idx_bytes(labels)
    return files


def write_tiny_mnist(
    root: str | Path, source: Literal["mnist", "fmnist"] = "mnist", train_per_class: int = 12, test_per_class: int = 6
) -> Path:
    """Writes ``<root>/MNIST/raw/*-idx?-ubyte`` (or ``<root>/FashionMNIST/raw/``) as torchvision reads them."""
    raw = Path(root) / ("MNIST" if source == "mnist" else "FashionMNIST") / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name, data in _mnist_files(source, train_per_class, test_per_class).items():
        (raw / name).write_bytes(data)
    return raw


def write_tiny_mnist_mirror(
    folder: str | Path,
    source: Literal["mnist", "fmnist"] = "mnist",
    train_per_class: int = 12,
    test_per_class: int = 6,
) -> dict[str, str]:
    """Writes the ``.gz`` files a torchvision MNIST mirror serves into ``folder``; returns ``{file name: md5}``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    md5s = {}
    for name, data in _mnist_files(source, train_per_class, test_per_class).items():
        blob = gzip.compress(data)
        (folder / f"{name}.gz").write_bytes(blob)
        md5s[f"{name}.gz"] = hashlib.md5(blob).hexdigest()
    return md5s


def write_tiny_cifar(root: str | Path, train_per_class: int = 10, test_per_class: int = 6) -> Path:
    """Writes ``<root>/cifar-10-batches-py/`` (five data batches, ``test_batch``, ``batches.meta``) as pickles.

    torchvision reads them only once :func:`patch_cifar_md5` has pointed its md5 check at them.
    """
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)

    def batch(labels: np.ndarray, name: str) -> dict:
        data = np.stack([np.full(3 * 32 * 32, pixel_value("cifar", int(c)), dtype=np.uint8) for c in labels])
        files = [f"{CIFAR_NAMES[c]}_{i}.png" for i, c in enumerate(labels)]
        return {"batch_label": name, "labels": [int(c) for c in labels], "data": data, "filenames": files}

    train = _labels(train_per_class)
    for i, name in enumerate(CIFAR_BATCHES):
        part = train[i::5]  # each batch holds every class
        with open(folder / name, "wb") as f:
            pickle.dump(batch(part, f"training batch {i + 1} of 5"), f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(batch(_labels(test_per_class), "testing batch 1 of 1"), f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"num_cases_per_batch": len(train) // 5, "label_names": CIFAR_NAMES, "num_vis": 3072}, f)
    return folder


def write_tiny_dominoes(root: str | Path) -> Path:
    """Writes all three dominoes sources (MNIST, FashionMNIST, CIFAR-10) under ``root``; returns ``root``.

    Before the datamodule reads CIFAR-10, apply :func:`patch_cifar_md5` to ``<root>/cifar-10-batches-py``.
    """
    write_tiny_mnist(root, "mnist")
    write_tiny_mnist(root, "fmnist")
    write_tiny_cifar(root)
    return Path(root)


def patch_cifar_md5(monkeypatch: pytest.MonkeyPatch, folder: str | Path) -> None:
    """Makes torchvision's CIFAR-10 integrity check expect the md5 sums of the tiny files in ``folder``.

    Args:
        monkeypatch: pytest's fixture (or anything with its ``setattr(target, name, value)``), which undoes the
            change after the test.
        folder: the ``cifar-10-batches-py`` folder :func:`write_tiny_cifar` wrote.
    """
    folder = Path(folder)

    def md5(name: str) -> str:
        return hashlib.md5((folder / name).read_bytes()).hexdigest()

    monkeypatch.setattr(CIFAR10, "train_list", [[name, md5(name)] for name in CIFAR_BATCHES])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5("test_batch")]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5("batches.meta")})
