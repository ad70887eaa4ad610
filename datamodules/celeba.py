"""CelebA (Liu et al. 2015) as a two-feature dataset: label Blond_Hair, spurious attribute Male by default.

Layouts found under ``root`` (see ``docs/data_formats.md``):

- torchvision's ``<root>/celeba/``: ``list_attr_celeba.txt`` (a count line, a line of 40 attribute names, then
  ``<file> v1 ... v40`` with -1/1 values separated by runs of spaces), ``list_eval_partition.txt``
  (``<file> <partition>``), ``img_align_celeba/``; the identity, bounding-box and landmark files are checked only
  on download (they are not needed here);
- the Kaggle CSV variant as WILDS lays it out, ``<root>/celebA_v1.0/``: ``list_attr_celeba.csv``
  (``image_id,<40 names>``), ``list_eval_partition.csv`` (``image_id,partition``), ``img_align_celeba/`` (Kaggle's
  doubled ``img_align_celeba/img_align_celeba/`` is accepted too).

Features (docs/method.md section 7, easy to hard): ``hair`` (= y) then ``gender`` (Male); groups ``2 * y + male``.
The download uses torchvision's Google Drive file list and md5 sums, into a hidden staging folder that is renamed
to ``celeba/`` only once every file has passed its checksum and the image count is right.
"""

from __future__ import annotations

import csv
import difflib
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import torch
from pytorch_lightning.utilities import rank_zero_warn
from torchvision.datasets import CelebA as TorchvisionCelebA
from typing_extensions import override

from lightning_sam.datamodules._download import DownloadError, count_files, extract_archive, file_md5
from lightning_sam.datamodules._split_listing import first_rows
from lightning_sam.datamodules.grouped_image_datamodule import GroupedImageDataModule, GroupedImageTable

TORCHVISION_FOLDER = "celeba"
WILDS_FOLDER = "celebA_v1.0"
IMAGE_FOLDER = "img_align_celeba"
# (Google Drive file id, md5, file name), as torchvision downloads them
CELEBA_FILES: tuple[tuple[str, str, str], ...] = tuple(tuple(entry) for entry in TorchvisionCelebA.file_list)
# line 2 of list_attr_celeba.txt in every release: the 40 attribute names, in column order
CELEBA_ATTRIBUTES = (  # noqa: SIM905 (the header line verbatim, as released)
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair Blond_Hair "
    "Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup High_Cheekbones "
    "Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose Receding_Hairline "
    "Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick "
    "Wearing_Necklace Wearing_Necktie Young"
).split()
# short feature names of the standard task; other attributes are named by their lower-cased attribute name
FEATURE_NAMES = {"Blond_Hair": "hair", "Male": "gender"}
PARTITION_CODES = (0, 1, 2)


def fetch_google_drive(file_id: str, dest: Path, md5: str) -> None:
    """Fetches one Google Drive file to ``dest`` through a temporary name, checking its md5 (torchvision + gdown).

    Raises:
        DownloadError: the file could not be fetched (Google Drive quota, no ``gdown``, no network) or its md5
            did not match.
    """
    from torchvision.datasets.utils import download_file_from_google_drive

    part = dest.with_name(f".{dest.name}.part")
    try:
        download_file_from_google_drive(file_id, str(dest.parent), part.name, md5)
        os.replace(part, dest)
    except Exception as e:  # torchvision raises RuntimeError, gdown its own errors, urllib OSError
        part.unlink(missing_ok=True)
        raise DownloadError(f"could not fetch {dest.name} (https://drive.google.com/uc?id={file_id}): {e}") from e


class CelebADataModule(GroupedImageDataModule):
    """CelebA with the official splits, a chosen label and spurious attribute, and group-balanced probe splits.

    Args:
        root: folder holding ``celeba/`` or ``celebA_v1.0/`` (or receiving ``celeba/``).
        batch_size: examples per batch (per device under DDP).
        num_workers: DataLoader worker processes.
        seed: seeds the probe subsamples and the training shuffle.
        target: attribute name of the label (``y = 1`` where the attribute is 1).
        spurious: attribute name of the spurious feature.
        download: fetch the torchvision layout in ``prepare_data`` when neither folder is found.
        image_size: side of the square input (224 for ImageNet-style ResNets, 64 for the small CNN).
        augment: random resized crops and flips on the training split.
        probe_source: the split the probe-train set is drawn from.
        probe_per_group: probe examples per group; default the smallest group's size.
    """

    split_sizes = (162770, 19867, 19962)
    num_images = 202599

    def __init__(
        self,
        root: str | Path = "data",
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        target: str = "Blond_Hair",
        spurious: str = "Male",
        download: bool = False,
        image_size: int = 224,
        augment: bool = False,
        probe_source: Literal["train", "val"] = "val",
        probe_per_group: int | None = None,
    ) -> None:
        super().__init__(
            root=root,
            batch_size=batch_size,
            num_workers=num_workers,
            seed=seed,
            download=download,
            image_size=image_size,
            augment=augment,
            probe_source=probe_source,
            probe_per_group=probe_per_group,
        )
        if target == spurious:
            raise ValueError(
                f"{type(self).__name__}: target and spurious must be different attributes, both are {target!r}"
            )
        for attribute, role in ((target, "target"), (spurious, "spurious")):
            _attribute_column(CELEBA_ATTRIBUTES, attribute, role, None)  # every release has these 40 columns
        self.target = target
        self.spurious = spurious
        self.feature_names = (FEATURE_NAMES.get(target, target.lower()), FEATURE_NAMES.get(spurious, spurious.lower()))

    def manual_steps(self) -> str:
        """How to put the data in place by hand, and the layouts this datamodule expects."""
        files = ", ".join(name for _, _, name in CELEBA_FILES)
        return (
            "Google Drive often refuses automated downloads (daily quota). Fetch the files by hand from the CelebA "
            f"page (https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html, Google Drive links): {files}; put them in "
            f"{self.root / TORCHVISION_FOLDER}/ and unzip img_align_celeba.zip there, giving "
            f"{self.root / TORCHVISION_FOLDER / IMAGE_FOLDER / '000001.jpg'} ... 202599.jpg. Or use the Kaggle CSV "
            "variant (list_attr_celeba.csv, list_eval_partition.csv, img_align_celeba/) as "
            f"{self.root / WILDS_FOLDER}/."
        )

    @override
    def find_folder(self) -> Path | None:
        for name in (TORCHVISION_FOLDER, WILDS_FOLDER):
            if (self.root / name).is_dir():
                return self.root / name
        return None

    @override
    def read_table(self) -> GroupedImageTable:
        folder = self.find_folder()
        if folder is None:
            where = (
                "does not exist"
                if not self.root.is_dir()
                else f"holds neither {TORCHVISION_FOLDER}/ nor {WILDS_FOLDER}/"
            )
            raise FileNotFoundError(
                f"CelebA not found: data root {self.root} {where}. Pass download=True (--data.init_args.download "
                f"true), or: {self.manual_steps()}"
            )
        csv_layout = folder.name == WILDS_FOLDER
        names, attributes = read_attributes(folder / ("list_attr_celeba.csv" if csv_layout else "list_attr_celeba.txt"))
        partition = read_partition(folder / ("list_eval_partition.csv" if csv_layout else "list_eval_partition.txt"))
        columns = [
            _attribute_column(names, a, role, folder)
            for a, role in ((self.target, "target"), (self.spurious, "spurious"))
        ]
        images = folder / IMAGE_FOLDER
        if (images / IMAGE_FOLDER).is_dir():
            images = images / IMAGE_FOLDER  # Kaggle's zip nests the folder
        if not images.is_dir():
            raise FileNotFoundError(f"{images} is missing: unzip img_align_celeba.zip into {folder}.")
        present = set(os.listdir(images))
        files, y, spurious, split = [], [], [], []
        unlabelled = []
        for name, code in partition.items():
            row = attributes.get(name)
            if row is None:
                unlabelled.append(name)
                continue
            files.append(images / name)
            y.append(int(row[columns[0]] == 1))
            spurious.append(int(row[columns[1]] == 1))
            split.append(code)
        if unlabelled:
            raise ValueError(
                f"{len(unlabelled)} images of the partition file in {folder} have no row in the attribute file "
                f"(e.g. {unlabelled[:3]}); the two files must come from the same release."
            )
        absent = [p.name for p in files if p.name not in present]
        if absent:
            raise FileNotFoundError(
                f"{len(absent)} of the {len(files)} images in the partition file are missing from {images} "
                f"(e.g. {absent[:3]}). Unzip the full img_align_celeba.zip there, or drop their rows to use a subset."
            )
        if not files:
            raise ValueError(f"the partition file in {folder} lists no images.")
        y_t, s_t = torch.tensor(y), torch.tensor(spurious)
        return GroupedImageTable(files, y_t, s_t, torch.stack([y_t, s_t], dim=1), torch.tensor(split))

    @override
    def download_dataset(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        # persistent hidden staging folder: files that passed their md5 survive a rate-limited retry
        staging = self.root / f".{TORCHVISION_FOLDER}.download"
        staging.mkdir(exist_ok=True)
        try:
            for file_id, md5, name in CELEBA_FILES:
                dest = staging / name
                if not (dest.is_file() and file_md5(dest) == md5):
                    fetch_google_drive(file_id, dest, md5)
            if not (staging / IMAGE_FOLDER).is_dir():
                extract_archive(staging / "img_align_celeba.zip", staging / IMAGE_FOLDER, strip_top_folder=True)
            self._verify(staging)
        except (DownloadError, ValueError, FileNotFoundError) as e:
            raise DownloadError(
                f"CelebA download failed: {e}\nVerified files are kept in {staging} for the next try. "
                f"{self.manual_steps()}"
            ) from e
        os.replace(staging, self.root / TORCHVISION_FOLDER)

    def _verify(self, folder: Path) -> None:
        """Strict check of a fresh download: image count and split sizes of the full release."""
        images = count_files(folder / IMAGE_FOLDER, suffixes=(".jpg",))
        codes = list(read_partition(folder / "list_eval_partition.txt").values())
        sizes = tuple(codes.count(code) for code in PARTITION_CODES)
        if images != self.num_images or sizes != self.split_sizes:
            shutil.rmtree(folder / IMAGE_FOLDER, ignore_errors=True)  # re-extract next time
            raise DownloadError(
                f"downloaded CelebA has {images} images and split sizes {sizes}, expected {self.num_images} and "
                f"{self.split_sizes}"
            )


def _rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """``(line number, fields)`` of a CelebA table: whitespace-separated for ``.txt``, comma-separated for ``.csv``."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: it is part of every CelebA release; copy it into {path.parent}.")
    with open(path, newline="") as f:
        if path.suffix == ".csv":
            for line, fields in enumerate(csv.reader(f), start=1):
                if fields:
                    yield line, [x.strip() for x in fields]
        else:
            for line, text in enumerate(f, start=1):
                if text.strip():
                    yield line, text.split()  # runs of spaces separate the columns


def read_attributes(path: Path) -> tuple[list[str], dict[str, list[int]]]:
    """Reads ``list_attr_celeba.txt`` (count line, names line, rows) or ``list_attr_celeba.csv`` (header, rows).

    Returns:
        The attribute names, and for every image file name its attribute values (-1 or 1) in that order.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: a malformed header or row, a value other than -1/1, or an image listed twice with different
            values (identical duplicate rows are dropped with a warning).
    """
    rows = _rows(path)
    declared: int | None = None  # the txt file's count line
    if path.suffix == ".csv":
        _, header = next(rows, (1, []))
        if not header or header[0] != "image_id":
            raise ValueError(f"{path}: the header must start with 'image_id', got {header[:3]}")
        names = header[1:]
    else:
        line, count = next(rows, (1, []))
        if len(count) != 1 or not count[0].isdigit():
            raise ValueError(f"{path}, line {line}: expected the image count, got {' '.join(count)!r}")
        declared = int(count[0])
        _, names = next(rows, (2, []))
    if not names:
        raise ValueError(f"{path}: no attribute names in the header")
    files, lines, values = [], [], []
    for line, fields in rows:
        if len(fields) != len(names) + 1:
            raise ValueError(
                f"{path}, line {line}: expected a file name and {len(names)} values, got {len(fields)} fields"
            )
        if any(v not in ("-1", "1") for v in fields[1:]):
            raise ValueError(f"{path}, line {line}: attribute values must be -1 or 1, got {fields[1:]}")
        files.append(fields[0])
        lines.append(line)
        values.append(tuple(int(v) for v in fields[1:]))
    attributes = {files[i]: list(values[i]) for i in first_rows(path, files, lines, values=values)}
    if declared is not None and declared != len(attributes):
        rank_zero_warn(
            f"{path}: the count line says {declared} images but {len(attributes)} rows follow; using the rows."
        )
    return names, attributes


def read_partition(path: Path) -> dict[str, int]:
    """Reads ``list_eval_partition.txt`` (``<file> <code>``) or ``.csv`` (header ``image_id,partition``).

    Returns:
        The partition code (0 train, 1 valid, 2 test) of every image file name, in file order.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: a malformed row, an unknown partition code, or an image listed in two partitions (identical
            duplicate rows are dropped with a warning).
    """
    rows = _rows(path)
    if path.suffix == ".csv":
        _, header = next(rows, (1, []))
        if header[:2] != ["image_id", "partition"]:
            raise ValueError(f"{path}: the header must be 'image_id,partition', got {','.join(header)!r}")
    files, lines, codes = [], [], []
    for line, fields in rows:
        if len(fields) != 2:
            raise ValueError(f"{path}, line {line}: expected '<file> <partition>', got {fields}")
        if fields[1] not in ("0", "1", "2"):
            raise ValueError(
                f"{path}, line {line}: unknown partition code {fields[1]!r}; expected 0 (train), 1 (valid) or 2 (test)."
            )
        files.append(fields[0])
        lines.append(line)
        codes.append(int(fields[1]))
    return {files[i]: codes[i] for i in first_rows(path, files, lines, splits=codes)}


def _attribute_column(names: Sequence[str], attribute: str, role: str, folder: Path | None) -> int:
    if attribute in names:
        return list(names).index(attribute)
    close = difflib.get_close_matches(attribute, names, n=3)
    hint = f" Did you mean {close}?" if close else ""
    where = "no CelebA release has such a column" if folder is None else f"the attribute file in {folder} has none"
    raise ValueError(
        f"unknown CelebA attribute {attribute!r} for {role} ({where}).{hint} Known attributes: {', '.join(names)}."
    )
