"""Tiny MNIST, FashionMNIST and CIFAR-10 files in torchvision's exact on-disk formats, for the dominoes tests.

Every image is one constant grey level that encodes its class, ``pixel_value(source, c)``, so a test can read back
which class each half of a domino shows. torchvision checks the md5 of the CIFAR-10 files against the real
release's: :func:`patch_cifar_md5` points those checks at the fixture files' own sums (the loader itself is
unchanged).
"""

from __future__ import annotations

import gzip
import hashlib
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from torchvision.datasets import CIFAR10

CIFAR_BATCHES = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"]
CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
_OFFSET = {"mnist": 10, "fmnist": 12, "cifar": 14}


def pixel_value(source: str, c: int) -> int:
    """The grey level of every pixel of a fixture image of class ``c``."""
    return _OFFSET[source] + 20 * c


def class_of(source: str, value: float) -> int:
    """Inverse of :func:`pixel_value` for a pixel read back as a ``[0, 1]`` float."""
    return round((round(value * 255) - _OFFSET[source]) / 20)


def _labels(per_class: int) -> np.ndarray:
    return np.repeat(np.arange(10), per_class).astype(np.uint8)


def idx_bytes(array: np.ndarray) -> bytes:
    """An array as an idx (SN3 "Pascal Vincent") file: magic ``0x0000 08 ndim``, big-endian dims, uint8 data."""
    header = struct.pack(">I", 0x0800 + array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def mnist_files(source: str, train_per_class: int, test_per_class: int) -> dict[str, bytes]:
    """The four raw idx files of MNIST (``source="mnist"``) or FashionMNIST, by torchvision's file names."""
    files = {}
    for prefix, per_class in (("train", train_per_class), ("t10k", test_per_class)):
        labels = _labels(per_class)
        images = np.stack([np.full((28, 28), pixel_value(source, int(c)), dtype=np.uint8) for c in labels])
        files[f"{prefix}-images-idx3-ubyte"] = idx_bytes(images)
        files[f"{prefix}-labels-idx1-ubyte"] = idx_bytes(labels)
    return files


def write_mnist(root: Path, source: str = "mnist", train_per_class: int = 12, test_per_class: int = 6) -> Path:
    """Writes ``root/MNIST/raw/*-idx?-ubyte`` (or ``root/FashionMNIST/raw``), as torchvision reads them."""
    raw = root / ("MNIST" if source == "mnist" else "FashionMNIST") / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name, data in mnist_files(source, train_per_class, test_per_class).items():
        (raw / name).write_bytes(data)
    return raw


def gzip_mnist(folder: Path, source: str = "mnist", train_per_class: int = 12, test_per_class: int = 6) -> dict:
    """Writes the ``.gz`` files a torchvision mirror serves; returns ``{file name: md5}``."""
    folder.mkdir(parents=True, exist_ok=True)
    md5s = {}
    for name, data in mnist_files(source, train_per_class, test_per_class).items():
        blob = gzip.compress(data)
        (folder / f"{name}.gz").write_bytes(blob)
        md5s[f"{name}.gz"] = hashlib.md5(blob).hexdigest()
    return md5s


def write_cifar(root: Path, train_per_class: int = 10, test_per_class: int = 6) -> Path:
    """Writes ``root/cifar-10-batches-py/`` (five data batches, ``test_batch``, ``batches.meta``) as pickles."""
    folder = root / "cifar-10-batches-py"
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


def patch_cifar_md5(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Makes torchvision's CIFAR-10 integrity check expect the fixture files' md5 sums."""

    def md5(name: str) -> str:
        return hashlib.md5((folder / name).read_bytes()).hexdigest()

    monkeypatch.setattr(CIFAR10, "train_list", [[name, md5(name)] for name in CIFAR_BATCHES])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5("test_batch")]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5("batches.meta")})


def write_dominoes_sources(root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """All three sources under ``root``, CIFAR-10's md5 checks pointed at the fixture."""
    write_mnist(root, "mnist")
    write_mnist(root, "fmnist")
    patch_cifar_md5(monkeypatch, write_cifar(root))
    return root
