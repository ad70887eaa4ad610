"""Waterbirds (Sagawa et al. 2019): CUB birds pasted on Places backgrounds, label waterbird, spurious background.

Layouts found under ``root`` (see ``docs/data_formats.md``): the original release
``<root>/waterbird_complete95_forest2water2/`` and WILDS' ``<root>/waterbirds_v1.0/``, both a ``metadata.csv``
(``img_id,img_filename,y,split,place,place_filename``) with images at ``img_filename`` relative to the folder.
Features (docs/method.md section 7, easy to hard): ``background`` (= place), ``bird`` (= y); groups ``2 * y + place``.

The download fetches the Group DRO authors' tarball. No checksum is published, so the extracted data is verified
by its split sizes, training group counts and image count before it is moved into place.
"""

from __future__ import annotations

import csv
import posixpath
from pathlib import Path
from typing import Literal

import torch
from typing_extensions import override

from lightning_sam.datamodules._download import DownloadError, download_url, extract_archive
from lightning_sam.datamodules._split_listing import first_rows
from lightning_sam.datamodules.grouped_image_datamodule import SPLIT_NAMES, GroupedImageDataModule, GroupedImageTable

WATERBIRDS_URL = "https://nlp.stanford.edu/data/dro/waterbird_complete95_forest2water2.tar.gz"
ORIGINAL_FOLDER = "waterbird_complete95_forest2water2"
WILDS_FOLDER = "waterbirds_v1.0"
REQUIRED_COLUMNS = ("img_filename", "y", "split", "place")


class WaterbirdsDataModule(GroupedImageDataModule):
    """Waterbirds with the standard splits, groups ``2 * y + place`` and group-balanced probe splits.

    Args:
        root: folder holding ``waterbird_complete95_forest2water2/`` or ``waterbirds_v1.0/`` (or receiving it).
        batch_size: examples per batch (per device under DDP).
        num_workers: DataLoader worker processes.
        seed: seeds the probe subsamples and the training shuffle.
        download: fetch the tarball in ``prepare_data`` when neither folder is found.
        image_size: side of the square input (224 for ImageNet-style ResNets, 64 for the small CNN).
        augment: random resized crops and flips on the training split.
        probe_source: the split the probe-train set is drawn from.
        probe_per_group: probe examples per group; default the smallest group's size.
        url: where the tarball is fetched from (a mirror, or a ``file://`` URL).
    """

    feature_names = ("background", "bird")
    split_sizes = (4795, 1199, 5794)
    train_group_counts_canonical = (3498, 184, 56, 1057)  # (y, place) = (0,0), (0,1), (1,0), (1,1)

    def __init__(
        self,
        root: str | Path = "data",
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        download: bool = False,
        image_size: int = 224,
        augment: bool = False,
        probe_source: Literal["train", "val"] = "val",
        probe_per_group: int | None = None,
        url: str = WATERBIRDS_URL,
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
        self.url = url

    def manual_steps(self) -> str:
        """How to put the data in place by hand, and the layout this datamodule expects."""
        return (
            f"Download {self.url} by hand and unpack it with `tar -xzf {ORIGINAL_FOLDER}.tar.gz -C {self.root}`, "
            f"giving {self.root / ORIGINAL_FOLDER / 'metadata.csv'} next to the image folders "
            f"(001.Black_footed_Albatross/ ...); WILDS' copy works too as {self.root / WILDS_FOLDER}/. "
            "Or pass download=True (--data.init_args.download true)."
        )

    @override
    def find_folder(self) -> Path | None:
        for name in (ORIGINAL_FOLDER, WILDS_FOLDER):
            if (self.root / name).is_dir():
                return self.root / name
        return None

    @override
    def read_table(self) -> GroupedImageTable:
        folder = self.find_folder()
        if folder is None:
            where = (
                "does not exist" if not self.root.is_dir() else f"holds neither {ORIGINAL_FOLDER}/ nor {WILDS_FOLDER}/"
            )
            raise FileNotFoundError(f"Waterbirds not found: data root {self.root} {where}. {self.manual_steps()}")
        return read_waterbirds_metadata(folder)

    @override
    def download_dataset(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        archive = self.root / f".{ORIGINAL_FOLDER}.tar.gz"  # hidden: never mistaken for a finished download
        try:
            download_url(self.url, archive, instructions=self.manual_steps())
            extract_archive(archive, self.root / ORIGINAL_FOLDER, strip_top_folder=True, verify=self._verify)
        except (DownloadError, ValueError, FileNotFoundError) as e:
            raise DownloadError(f"Waterbirds download from {self.url} failed: {e}\n{self.manual_steps()}") from e
        finally:
            archive.unlink(missing_ok=True)  # extracted, or bad: either way not worth keeping

    def _verify(self, folder: Path) -> None:
        """Strict check of a fresh download: the full release's split sizes, group counts and images."""
        table = read_waterbirds_metadata(folder)
        sizes = tuple(int((table.split == code).sum()) for code in range(len(SPLIT_NAMES)))
        train = table.split == 0
        groups = tuple(torch.bincount(table.group[train], minlength=4).tolist())
        if sizes != self.split_sizes or groups != self.train_group_counts_canonical:
            raise DownloadError(
                f"downloaded Waterbirds has train/val/test sizes {sizes} and training group counts {groups}, "
                f"expected {self.split_sizes} and {self.train_group_counts_canonical}: the archive is incomplete "
                "or not the Group DRO release"
            )


def read_waterbirds_metadata(folder: Path) -> GroupedImageTable:
    """Reads and validates ``folder/metadata.csv`` and checks that every listed image exists.

    Args:
        folder: the dataset folder (``waterbird_complete95_forest2water2/`` or ``waterbirds_v1.0/``).

    Raises:
        FileNotFoundError: ``metadata.csv`` or listed images are missing.
        ValueError: a column is missing, a value of ``y``, ``split`` or ``place`` is not a known code, or an image is
            listed in two splits or twice with different labels (identical duplicate rows are dropped with a
            warning).
    """
    path = folder / "metadata.csv"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: {folder} should hold metadata.csv and the image folders. Unpack the Waterbirds "
            "release again (or delete the folder and pass download=True)."
        )
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise ValueError(
                f"{path} lacks column(s) {missing}; its header is {columns}, expected "
                "img_id,img_filename,y,split,place,place_filename. Use the original or WILDS metadata.csv."
            )
        names, lines, y, split, place = [], [], [], [], []
        for line, row in enumerate(reader, start=2):
            names.append(posixpath.normpath((row["img_filename"] or "").strip().replace("\\", "/")))
            lines.append(line)
            y.append(_code(row, "y", (0, 1), path, line))
            split.append(_code(row, "split", (0, 1, 2), path, line))
            place.append(_code(row, "place", (0, 1), path, line))
    if not names:
        raise ValueError(f"{path} lists no images.")
    keep = first_rows(path, names, lines, split, values=list(zip(y, place)))
    files = [folder / names[i] for i in keep]
    y, split, place = [y[i] for i in keep], [split[i] for i in keep], [place[i] for i in keep]
    absent = [p for p in files if not p.is_file()]
    if absent:
        shown = ", ".join(str(p.relative_to(folder)) for p in absent[:3])
        raise FileNotFoundError(
            f"{len(absent)} of the {len(files)} images listed in {path} are missing under {folder} (e.g. {shown}). "
            "Unpack the full release there, or remove their rows from metadata.csv to use a subset."
        )
    y_t, place_t = torch.tensor(y), torch.tensor(place)
    return GroupedImageTable(files, y_t, place_t, torch.stack([place_t, y_t], dim=1), torch.tensor(split))


def _code(row: dict[str, str], column: str, allowed: tuple[int, ...], path: Path, line: int) -> int:
    value = (row.get(column) or "").strip()
    try:
        code = int(float(value))  # some exports write 1.0
    except ValueError:
        code = None
    if code is None or code not in allowed or float(value) != code:
        meaning = " (0 train, 1 val, 2 test)" if column == "split" else ""
        raise ValueError(f"{path}, line {line}: unknown {column} value {value!r}; expected one of {allowed}{meaning}.")
    return code
