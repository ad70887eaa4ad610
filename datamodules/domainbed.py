"""DomainBed's image datasets (Gulrajani and Lopez-Paz 2021, arXiv 2007.01434) with leave-one-domain-out splits.

Layout, as DomainBed's own downloader leaves it: ``<root>/<folder>/<domain>/<class>/<image>``. Domains are the sorted
domain folder names; unlike DomainBed (which builds an ``ImageFolder`` per domain, so a domain lacking a class shifts
every later label) the classes are *one* sorted list for all domains: the canonical list where it is known (PACS,
VLCS, TerraIncognita), else the sorted union of the class folders found. Hidden files and folders are skipped.

Splits follow DomainBed's evaluation: every domain is split 80 % "in" / 20 % "out" with a seeded permutation (the
"out" count rounded to the nearest, where DomainBed rounds down); with ``test_domain`` set, training uses the other
domains' "in" parts and validation their "out" parts, and the test domain is held out entirely. The paper's transfer
evaluation (docs/method.md section 7; :class:`TransferProbe`) fits a linear probe on the test domain's "in" part and
scores it on its "out" part (:meth:`transfer_dataloaders`). The feature probe splits are the "in" and "out" parts of
all domains, with features ``("domain", "class")``.

Downloads use DomainBed's sources (Google Drive for PACS, VLCS and OfficeHome; LILA for TerraIncognita, filtered to
DomainBed's four locations and ten classes), fetched into a temporary folder, checked against the canonical image
counts, then moved into place.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Literal, NamedTuple

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from torchvision.datasets.utils import download_file_from_google_drive
from typing_extensions import override

from lightning_sam.datamodules._download import (
    DownloadError,
    download_url,
    extract_archive,
    require_writable,
    temporary_folder,
)
from lightning_sam.datamodules._transforms import IMAGENET_SIZE, image_transform
from lightning_sam.datamodules.feature_datamodule import FeatureDataModule
from lightning_sam.datamodules.image_feature_dataset import ImageFeatureDataset
from lightning_sam.functional.linear_probe import held_out_split

DatasetName = Literal["PACS", "VLCS", "OfficeHome", "TerraIncognita"]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


class Archive(NamedTuple):
    """One file a dataset's download fetches: from ``url``, or from Google Drive when ``gdrive_id`` is set."""

    filename: str
    url: str | None = None
    gdrive_id: str | None = None
    md5: str | None = None  # DomainBed publishes none; the content is verified by counts instead


class DomainBedSpec(NamedTuple):
    """What is known about one DomainBed dataset: its folder, domains, classes, sizes and sources.

    ``classes`` is ``None`` where only the count is fixed here (OfficeHome): the classes are then the
    sorted union of the class folders found. ``domain_sizes`` / ``total`` are the canonical image counts (``None``:
    unchecked). ``top_folder`` is the folder of the (single) archive that becomes ``<root>/<folder>``.
    """

    folder: str
    domains: tuple[str, ...]
    num_classes: int
    classes: tuple[str, ...] | None
    domain_sizes: dict[str, int] | None
    total: int | None
    archives: tuple[Archive, ...]
    top_folder: str | None = None
    source_page: str = ""


_TERRA_LOCATIONS = ("38", "43", "46", "100")
_LILA = "https://lilablobssc.blob.core.windows.net/caltechcameratraps"

DATASETS: dict[str, DomainBedSpec] = {
    "PACS": DomainBedSpec(
        folder="PACS",
        domains=("art_painting", "cartoon", "photo", "sketch"),
        num_classes=7,
        classes=("dog", "elephant", "giraffe", "guitar", "horse", "house", "person"),
        domain_sizes={"art_painting": 2048, "cartoon": 2344, "photo": 1670, "sketch": 3929},
        total=9991,
        archives=(Archive("PACS.zip", gdrive_id="1JFr8f805nMUelQWWmfnJR3y4_SYoN5Pd"),),
        top_folder="kfold",
        source_page="https://domaingeneralization.github.io/ (PACS)",
    ),
    "VLCS": DomainBedSpec(
        folder="VLCS",
        domains=("Caltech101", "LabelMe", "SUN09", "VOC2007"),
        num_classes=5,
        classes=("bird", "car", "chair", "dog", "person"),
        domain_sizes={"Caltech101": 1415, "LabelMe": 2656, "SUN09": 3282, "VOC2007": 3376},
        total=10729,
        archives=(Archive("VLCS.tar.gz", gdrive_id="1skwblH1_okBwxWxmRsp9_qi15hyPpxg8"),),
        top_folder="VLCS",
        source_page="https://github.com/facebookresearch/DomainBed (domainbed/scripts/download.py)",
    ),
    "OfficeHome": DomainBedSpec(
        folder="office_home",
        domains=("Art", "Clipart", "Product", "Real World"),
        num_classes=65,
        classes=None,
        domain_sizes=None,
        total=15588,
        archives=(Archive("office_home.zip", gdrive_id="1uY0pj7oFsjMxRwaD3Sxy0jgel0fsYXLC"),),
        top_folder="OfficeHomeDataset_10072016",
        source_page="https://www.hemanthdv.org/officeHomeDataset.html",
    ),
    "TerraIncognita": DomainBedSpec(
        folder="terra_incognita",
        domains=tuple(f"location_{loc}" for loc in sorted(_TERRA_LOCATIONS)),
        num_classes=10,
        classes=("bird", "bobcat", "cat", "coyote", "dog", "empty", "opossum", "rabbit", "raccoon", "squirrel"),
        domain_sizes=None,
        total=24330,  # what the current LILA source yields; the papers report 24,788
        archives=(
            Archive("eccv_18_all_images_sm.tar.gz", url=f"{_LILA}/eccv_18_all_images_sm.tar.gz"),
            Archive("caltech_camera_traps.json.zip", url=f"{_LILA}/labels/caltech_camera_traps.json.zip"),
        ),
        source_page="https://lila.science/datasets/caltech-camera-traps",
    ),
}


def _visible(folder: Path) -> list[Path]:
    """The non-hidden entries of ``folder``, sorted by name (hidden: a leading ``.``, e.g. ``.ipynb_checkpoints``)."""
    return sorted((p for p in folder.iterdir() if not p.name.startswith(".")), key=lambda p: p.name)


def _images(folder: Path) -> list[Path]:
    """Image files below ``folder`` (any depth), skipping hidden entries, sorted for a stable order."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found += [Path(dirpath, f) for f in filenames if not f.startswith(".") and f.lower().endswith(IMAGE_SUFFIXES)]
    return sorted(found)


class DomainBedDataModule(FeatureDataModule):
    """One DomainBed dataset with every domain split 80/20, optionally leaving ``test_domain`` out.

    ``y`` is the class; ``feature_names = ("domain", "class")``; group ``domain * num_classes + class``, over the
    canonical domains (``num_groups = len(domains) * num_classes``).

    Args:
        root: folder holding (or receiving) ``PACS/``, ``VLCS/``, ``office_home/`` or ``terra_incognita/``.
        batch_size: examples per batch.
        num_workers: DataLoader worker processes.
        seed: seeds the 80/20 split of every domain.
        dataset: which DomainBed dataset.
        test_domain: the held-out target domain (leave-one-domain-out); ``None`` trains on all domains.
        holdout_fraction: the "out" share of every domain (DomainBed: 0.2).
        image_size: side of the square input (224 for ImageNet-style ResNets).
        augment: random resized crops and flips on the training split.
        download: fetch the dataset from DomainBed's sources when its folder is missing.
    """

    def __init__(
        self,
        root: str | Path = "data",
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        dataset: DatasetName = "PACS",
        test_domain: str | None = None,
        holdout_fraction: float = 0.2,
        image_size: int = IMAGENET_SIZE,
        augment: bool = False,
        download: bool = True,
    ) -> None:
        super().__init__(root, batch_size, num_workers, seed)
        if dataset not in DATASETS:
            raise ValueError(f"{type(self).__name__}: dataset must be one of {sorted(DATASETS)}, got {dataset!r}")
        spec = DATASETS[dataset]
        if test_domain is not None and test_domain not in spec.domains:
            raise ValueError(
                f"test_domain {test_domain!r} is not a domain of {dataset}; valid test domains: {list(spec.domains)}"
            )
        if not 0.0 < holdout_fraction < 1.0:
            raise ValueError(f"{type(self).__name__}: holdout_fraction must be in (0, 1), got {holdout_fraction}")
        if image_size < 1:
            raise ValueError(f"{type(self).__name__}: image_size must be >= 1, got {image_size}")
        self.dataset, self.test_domain, self.holdout_fraction = dataset, test_domain, holdout_fraction
        self.image_size, self.augment, self.download = image_size, augment, download
        self.num_classes = spec.num_classes
        self.feature_names = ("domain", "class")
        self.num_groups = len(spec.domains) * spec.num_classes
        self.domains: tuple[str, ...] = spec.domains
        self.classes: tuple[str, ...] = spec.classes or ()
        self.target_fit_dataset: ImageFeatureDataset | None = None
        self.target_eval_dataset: ImageFeatureDataset | None = None

    @property
    def spec(self) -> DomainBedSpec:
        """What is known about the chosen dataset (:data:`DATASETS`)."""
        return DATASETS[self.dataset]

    @property
    def data_dir(self) -> Path:
        """``<root>/<folder>``, the folder whose subfolders are the domains."""
        return self.root / self.spec.folder

    @override
    def prepare_data(self) -> None:
        if self.data_dir.exists():
            return
        if not self.download:
            raise FileNotFoundError(
                f"{type(self).__name__}: {self.data_dir} not found and download=False. {self._manual_steps()}"
            )
        self._download()

    @override
    def setup(self, stage: str | None = None) -> None:
        if not self.data_dir.is_dir():
            raise FileNotFoundError(f"{type(self).__name__}: {self.data_dir} not found. {self._manual_steps()}")
        files, y, domain = self._index()
        features = torch.stack([domain, y], dim=1)
        group = domain * self.num_classes + y
        train_tf = image_transform(self.image_size, augment=self.augment)
        eval_tf = image_transform(self.image_size)
        everything = ImageFeatureDataset(files, y, features, group, eval_tf)

        ins, outs = [], []
        for d in range(len(self.domains)):
            where = (domain == d).nonzero().squeeze(1)
            # DomainBed's split: a seeded permutation of the domain, no strata
            keep, out = held_out_split(torch.zeros(len(where)), self.holdout_fraction, self.seed * 1_000_003 + d)
            ins.append(where[keep])
            outs.append(where[out])
        target = self.domains.index(self.test_domain) if self.test_domain is not None else None
        sources = [d for d in range(len(self.domains)) if d != target]

        def join(parts: list[Tensor], domains: list[int]) -> Tensor:
            return torch.cat([parts[d] for d in domains])

        self.train_dataset = everything.subset(join(ins, sources), train_tf)
        self.val_dataset = everything.subset(join(outs, sources))
        self.probe_train_dataset = everything.subset(torch.cat(ins).sort().values)
        self.probe_test_dataset = everything.subset(torch.cat(outs).sort().values)
        if target is not None:
            self.test_dataset = everything.subset((domain == target).nonzero().squeeze(1))
            self.target_fit_dataset = everything.subset(ins[target])
            self.target_eval_dataset = everything.subset(outs[target])

    def transfer_dataloaders(self) -> tuple[DataLoader, DataLoader]:
        """The (fit, evaluate) loaders of the test domain's "in" and "out" parts, for the transfer probe."""
        if self.test_domain is None:
            raise ValueError(
                f"{type(self).__name__}(dataset={self.dataset!r}) has no test_domain: set test_domain to one of "
                f"{list(self.domains)} for the transfer evaluation"
            )
        return (
            self._loader(self.target_fit_dataset, "target_fit_dataset"),
            self._loader(self.target_eval_dataset, "target_eval_dataset"),
        )

    def _index(self) -> tuple[list[Path], Tensor, Tensor]:
        """Every image's path, class index and domain index; checks the layout against the canonical release."""
        name, spec = type(self).__name__, self.spec
        found = {p.name: p for p in _visible(self.data_dir) if p.is_dir()}
        missing = [d for d in spec.domains if d not in found]
        if missing:
            raise FileNotFoundError(
                f"{name}: domain folders {missing} missing under {self.data_dir} (found {sorted(found)}). "
                f"{self._manual_steps()}"
            )
        extra = sorted(set(found) - set(spec.domains))
        if extra:
            warnings.warn(
                f"{name}: ignoring folders {extra} in {self.data_dir}, not {self.dataset} domains", stacklevel=3
            )

        class_dirs = {d: {p.name: p for p in _visible(found[d]) if p.is_dir()} for d in spec.domains}
        for d, dirs in class_dirs.items():
            if not dirs:
                raise FileNotFoundError(f"{name}: {found[d]} has no class folders; expected {found[d]}/<class>/<image>")
        seen = sorted(set().union(*class_dirs.values()))
        if spec.classes is not None:
            unknown = [c for c in seen if c not in spec.classes]
            if unknown:
                raise ValueError(
                    f"{name}: class folders {unknown} under {self.data_dir} are not {self.dataset} classes "
                    f"{list(spec.classes)}"
                )
            classes = spec.classes
        else:
            if len(seen) > spec.num_classes:
                raise ValueError(
                    f"{name}: {len(seen)} class folders under {self.data_dir}, but {self.dataset} has "
                    f"{spec.num_classes} classes"
                )
            classes = tuple(seen)
        if len(seen) < spec.num_classes:
            warnings.warn(
                f"{name}: {self.data_dir} holds {len(seen)} of the {spec.num_classes} classes of {self.dataset}; "
                "loading a subset",
                stacklevel=3,
            )
        self.classes = classes

        files: list[Path] = []
        labels: list[int] = []
        domains: list[int] = []
        counts = {}
        for d_index, d in enumerate(spec.domains):
            counts[d] = 0
            for c, folder in class_dirs[d].items():
                images = _images(folder)
                if not images:
                    raise ValueError(
                        f"{name}: class folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}); add its "
                        "images or remove the folder"
                    )
                files += images
                labels += [classes.index(c)] * len(images)
                domains += [d_index] * len(images)
                counts[d] += len(images)
        problems = _count_problems(counts, spec)
        if problems:
            warnings.warn(
                f"{name}: {self.data_dir} differs from the canonical {self.dataset} release ({problems}); loading it "
                "as a subset",
                stacklevel=3,
            )
        return files, torch.tensor(labels), torch.tensor(domains)

    def _manual_steps(self) -> str:
        spec = self.spec
        sources = ", ".join(
            f"https://drive.google.com/uc?id={a.gdrive_id}" if a.gdrive_id else str(a.url) for a in spec.archives
        )
        layout = f"{self.data_dir}/<domain>/<class>/<image> with domains {list(spec.domains)}"
        fetch = "download=True" if not self.download else "a retry (Google Drive often rate-limits)"
        return (
            f"Get {self.dataset} with {fetch}, or by hand: download {sources} ({spec.source_page}), extract it, and "
            f"arrange it as {layout} (DomainBed's layout; see domainbed/scripts/download.py)."
        )

    def _download(self) -> None:
        spec, name = self.spec, type(self).__name__
        require_writable(self.root)
        staging = temporary_folder(self.root, spec.folder, ".partial")
        try:
            archives = []
            for archive in spec.archives:
                dest = staging / archive.filename
                if archive.gdrive_id is not None:
                    try:
                        download_file_from_google_drive(archive.gdrive_id, str(staging), archive.filename, archive.md5)
                    except Exception as error:
                        raise DownloadError(
                            f"{name}: Google Drive refused {archive.filename} ({error}). {self._manual_steps()}"
                        ) from error
                else:
                    download_url(str(archive.url), dest, archive.md5, instructions=self._manual_steps())
                archives.append(dest)
            assembled = staging / spec.folder
            if self.dataset == "TerraIncognita":
                _assemble_terra_incognita(archives, staging, assembled)
            elif spec.top_folder is not None:
                extract_archive(archives[0], staging / "extracted")
                top = staging / "extracted" / spec.top_folder
                if not top.is_dir():
                    raise DownloadError(
                        f"{name}: {archives[0].name} has no folder {spec.top_folder}/. {self._manual_steps()}"
                    )
                os.replace(top, assembled)
            self._verify_download(assembled)
            os.replace(assembled, self.data_dir)  # only a complete, verified folder ever gets the real name
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _verify_download(self, folder: Path) -> None:
        """Strict check of a fresh download: every domain present, image counts equal to the canonical release."""
        spec = self.spec
        missing = [d for d in spec.domains if not (folder / d).is_dir()]
        counts = {d: len(_images(folder / d)) for d in spec.domains if d not in missing}
        problems = _count_problems(counts, spec)
        if missing or problems:
            raise DownloadError(
                f"{type(self).__name__}: the downloaded {self.dataset} is incomplete "
                f"(missing domains {missing}; {problems or 'counts not checked'}); nothing was kept. "
                f"{self._manual_steps()}"
            )


def _count_problems(counts: dict[str, int], spec: DomainBedSpec) -> str:
    """Differences between per-domain image counts and the canonical ones, as text ("" when none)."""
    problems = []
    if spec.domain_sizes is not None:
        problems += [
            f"{d}: {n} images, expected {spec.domain_sizes[d]}" for d, n in counts.items() if n != spec.domain_sizes[d]
        ]
    total = sum(counts.values())
    if spec.total is not None and total != spec.total:
        problems.append(f"{total} images in all, expected {spec.total}")
    return "; ".join(problems)


def _assemble_terra_incognita(archives: list[Path], staging: Path, dest: Path) -> None:
    """DomainBed's filtering of Caltech Camera Traps: locations 38, 43, 46, 100 and its ten classes.

    An image is copied to ``location_<loc>/<category>/`` once for every included category it is annotated with.
    """
    images_tar, annotations_zip = archives
    extract_archive(images_tar, staging / "images")
    extract_archive(annotations_zip, staging / "annotations")
    json_files = sorted((staging / "annotations").rglob("*.json"))
    image_dirs = [p for p in (staging / "images").rglob("eccv_18_all_images_sm") if p.is_dir()]
    if len(json_files) != 1 or len(image_dirs) != 1:
        raise DownloadError(
            f"TerraIncognita: expected one annotation file and one eccv_18_all_images_sm/ folder, found "
            f"{[p.name for p in json_files]} and {len(image_dirs)} image folders"
        )
    data = json.loads(json_files[0].read_text())
    categories = {c["id"]: c["name"] for c in data["categories"]}
    wanted = set(DATASETS["TerraIncognita"].classes or ())
    labels: dict[object, set[str]] = {}
    for annotation in data["annotations"]:
        name = categories[annotation["category_id"]]
        if name in wanted:
            labels.setdefault(annotation["image_id"], set()).add(name)
    for image in data["images"]:
        location = str(image["location"])
        if location not in _TERRA_LOCATIONS:
            continue
        for category in sorted(labels.get(image["id"], ())):
            target = dest / f"location_{location}" / category / image["file_name"]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(image_dirs[0] / image["file_name"], target)
