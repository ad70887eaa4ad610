"""Bad input, end to end through the public API: refused with an error that names the culprit, and nothing written.

Each case builds its fixture in ``tmp_path`` with the writers of :mod:`lightning_sam.datamodules.demos` (plus
``tarfile``/``zipfile`` for hostile archives) and returns the call to make and the text the message must name: the
file, the archive member, or the argument. The test snapshots the whole of ``tmp_path`` (every path, its kind, mode,
bytes or link target) before and after: a refused input leaves no half-written cache, download or ``.extracting``
folder behind.
"""

from __future__ import annotations

import csv
import io
import os
import stat
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
from torch.utils.data import DataLoader

from lightning_sam.datamodules import (
    CelebADataModule,
    CifarMnistDataModule,
    DomainBedDataModule,
    FmnistMnistDataModule,
    WaterbirdsDataModule,
)
from lightning_sam.datamodules._download import DownloadError, download_url, extract_archive
from lightning_sam.datamodules.demos import (
    TINY_WATERBIRDS_COUNTS,
    damage_file,
    patch_cifar_md5,
    write_tiny_celeba,
    write_tiny_domainbed,
    write_tiny_dominoes,
    write_tiny_mnist,
    write_tiny_waterbirds,
    write_tiny_waterbirds_tarball,
)
from lightning_sam.datamodules.feature_datamodule import FeatureDataModule
from lightning_sam.datamodules.image_feature_dataset import UnreadableImageError

pytestmark = pytest.mark.filterwarnings("ignore:.*(subset|canonical).*:UserWarning")

ORIGINAL = "waterbird_complete95_forest2water2"
Action = Callable[[], object]


class Case(NamedTuple):
    """One bad input: ``build(tmp_path, monkeypatch)`` returns the call and the text(s) its message must name."""

    id: str
    error: type[BaseException]
    build: Callable[[Path, pytest.MonkeyPatch], tuple[Action, tuple[str, ...]]]


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every path below ``folder`` (hidden ones included) with its kind, permission bits and content."""
    tree: dict[str, tuple] = {}
    for path in sorted(folder.rglob("*")):
        mode = stat.S_IMODE(path.lstat().st_mode)
        if path.is_symlink():
            tree[str(path)] = ("link", os.readlink(path))
        elif path.is_dir():
            tree[str(path)] = ("dir", mode)
        else:
            tree[str(path)] = ("file", mode, path.read_bytes())
    return tree


def read_everything(dm: FeatureDataModule) -> Action:
    """Builds the splits and draws every batch of every split, as training and evaluation would."""

    def run() -> None:
        dm.setup("fit")
        for loader in (dm.train_dataloader(), dm.val_dataloader()):
            for _ in loader:
                pass

    return run


# ---------------------------------------------------------------------------------------------------- fixtures


def _tar(
    path: Path, files: dict[str, bytes], symlinks: dict[str, str] | None = None, hardlinks: dict[str, str] | None = None
) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for links, kind in ((symlinks or {}, tarfile.SYMTYPE), (hardlinks or {}, tarfile.LNKTYPE)):
            for name, target in links.items():
                info = tarfile.TarInfo(name)
                info.type, info.linkname = kind, target
                tf.addfile(info)
    return path


def _waterbirds(tmp_path: Path, **kwargs) -> tuple[Path, WaterbirdsDataModule]:
    root = tmp_path / "data"
    folder = write_tiny_waterbirds(root)
    return folder, WaterbirdsDataModule(root, batch_size=4, image_size=8, **kwargs)


def _metadata_rows(folder: Path) -> list[list[str]]:
    with open(folder / "metadata.csv", newline="") as f:
        return list(csv.reader(f))


def _write_metadata(folder: Path, rows: list[list[str]]) -> None:
    with open(folder / "metadata.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)


def _waterbirds_image(folder: Path, split: int = 0, nth: int = 0) -> Path:
    """The ``nth`` image of ``split`` in ``metadata.csv``."""
    rows = [r for r in _metadata_rows(folder)[1:] if r[3] == str(split)]
    return folder / rows[nth][1]


def _celeba(tmp_path: Path, layout: str = "torchvision", **kwargs) -> tuple[Path, CelebADataModule]:
    root = tmp_path / "data"
    folder = write_tiny_celeba(root, layout=layout)
    return folder, CelebADataModule(root, batch_size=8, image_size=8, **kwargs)


def _emulate_permissions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Makes ``os.access`` honour the mode bits as for a non-root user (root is allowed everything)."""
    real = os.access

    def access(path, mode, **kwargs) -> bool:
        if mode & os.W_OK and not os.stat(path).st_mode & stat.S_IWUSR:
            return False
        return real(path, mode, **kwargs)

    monkeypatch.setattr(os, "access", access)


def _read_only(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    _emulate_permissions(monkeypatch)
    return folder


# ------------------------------------------------------------------------------------------------------ cases


def symlink_escaping_once_top_is_stripped(tmp_path: Path, _: pytest.MonkeyPatch) -> tuple[Action, tuple[str, ...]]:
    archive = _tar(tmp_path / "a.tar.gz", {"top/a.txt": b"a"}, symlinks={"top/y": ".."})
    return lambda: extract_archive(archive, tmp_path / "data" / "top", strip_top_folder=True), ("'top/y'", "'..'")


def hardlink_outside_the_top_folder(tmp_path: Path, _: pytest.MonkeyPatch) -> tuple[Action, tuple[str, ...]]:
    archive = _tar(tmp_path / "a.tar.gz", {"top/a.txt": b"a"}, hardlinks={"top/h": "top/../../etc/passwd"})
    return lambda: extract_archive(archive, tmp_path / "data" / "top", strip_top_folder=True), ("'top/h'",)


def top_folder_that_is_a_symlink(tmp_path: Path, _: pytest.MonkeyPatch) -> tuple[Action, tuple[str, ...]]:
    archive = _tar(tmp_path / "a.tar.gz", {}, symlinks={"top": "."})
    return lambda: extract_archive(archive, tmp_path / "data" / "top", strip_top_folder=True), ("'top'",)


def absolute_symlink(tmp_path: Path, _: pytest.MonkeyPatch) -> tuple[Action, tuple[str, ...]]:
    archive = _tar(tmp_path / "a.tar.gz", {"top/a.txt": b"a"}, symlinks={"top/etc": "/etc"})
    return lambda: extract_archive(archive, tmp_path / "data" / "top"), ("'top/etc'", "/etc")


def zip_slip(tmp_path: Path, _: pytest.MonkeyPatch) -> tuple[Action, tuple[str, ...]]:
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("top/ok.txt", b"ok")
        zf.writestr("top/../../evil.txt", b"pwned")
    return lambda: extract_archive(archive, tmp_path / "data" / "top"), ("evil.txt",)


def truncated_tarball(tmp_path: Path, _: pytest.MonkeyPatch) -> tuple[Action, tuple[str, ...]]:
    archive = _tar(tmp_path / "a.tar.gz", {f"top/{i}.bin": os.urandom(4096) for i in range(8)})
    archive.write_bytes(archive.read_bytes()[:10000])
    return lambda: extract_archive(archive, tmp_path / "data" / "top"), (str(archive), "download it again")


def html_page_saved_as_archive(tmp_path: Path, _: pytest.MonkeyPatch) -> tuple[Action, tuple[str, ...]]:
    archive = damage_file(tmp_path / "a.tar.gz", "garbage")
    return lambda: extract_archive(archive, tmp_path / "data" / "top"), (str(archive),)


def empty_archive_file(tmp_path: Path, _: pytest.MonkeyPatch) -> tuple[Action, tuple[str, ...]]:
    archive = damage_file(tmp_path / "a.zip", "empty")
    return lambda: extract_archive(archive, tmp_path / "data" / "top"), (str(archive),)


def two_top_folders_with_strip(tmp_path: Path, _: pytest.MonkeyPatch) -> tuple[Action, tuple[str, ...]]:
    archive = _tar(tmp_path / "a.tar.gz", {"top/a.txt": b"a", "other/b.txt": b"b"})
    return lambda: extract_archive(archive, tmp_path / "data" / "top", strip_top_folder=True), (str(archive),)


def missing_archive(tmp_path: Path, _: pytest.MonkeyPatch) -> tuple[Action, tuple[str, ...]]:
    archive = tmp_path / "never-downloaded.tar.gz"
    return lambda: extract_archive(archive, tmp_path / "data" / "top"), (str(archive),)


def unreachable_file_url(tmp_path: Path, _: pytest.MonkeyPatch) -> tuple[Action, tuple[str, ...]]:
    url = (tmp_path / "gone.tar.gz").as_uri()
    (tmp_path / "data").mkdir()
    return lambda: download_url(url, tmp_path / "data" / "x.tar.gz"), (url,)


def checksum_mismatch(tmp_path: Path, _: pytest.MonkeyPatch) -> tuple[Action, tuple[str, ...]]:
    source = damage_file(tmp_path / "served.tar.gz", "garbage")
    (tmp_path / "data").mkdir()
    return lambda: download_url(source.as_uri(), tmp_path / "data" / "x.tar.gz", md5="0" * 32), (source.as_uri(),)


def waterbirds_tarball_with_escaping_link(tmp_path: Path, _: pytest.MonkeyPatch) -> tuple[Action, tuple[str, ...]]:
    archive = write_tiny_waterbirds_tarball(
        tmp_path / "served" / f"{ORIGINAL}.tar.gz", symlinks={f"{ORIGINAL}/y": ".."}
    )
    root = tmp_path / "data"
    root.mkdir()
    dm = WaterbirdsDataModule(root, download=True, url=archive.as_uri())
    # the fixture passes for the full release: only the link can stop it
    dm.split_sizes = tuple(sum(TINY_WATERBIRDS_COUNTS[s]) for s in (0, 1, 2))
    dm.train_group_counts_canonical = TINY_WATERBIRDS_COUNTS[0]
    return dm.prepare_data, (f"'{ORIGINAL}/y'",)


def _waterbirds_leak(split: str) -> Callable[[Path, pytest.MonkeyPatch], tuple[Action, tuple[str, ...]]]:
    def build(tmp_path: Path, _: pytest.MonkeyPatch) -> tuple[Action, tuple[str, ...]]:
        folder, dm = _waterbirds(tmp_path)
        rows = _metadata_rows(folder)
        leaked = next(r for r in rows[1:] if r[3] == "0")
        _write_metadata(folder, [*rows, [str(len(rows)), leaked[1], leaked[2], split, *leaked[4:]]])
        return lambda: dm.setup("fit"), (str(folder / "metadata.csv"), leaked[1], "train")

    return build


def waterbirds_duplicate_with_other_label(tmp_path: Path, _: pytest.MonkeyPatch) -> tuple[Action, tuple[str, ...]]:
    folder, dm = _waterbirds(tmp_path)
    rows = _metadata_rows(folder)
    twin = list(rows[1])
    twin[2] = "1" if twin[2] == "0" else "0"
    _write_metadata(folder, [*rows, twin])
    return lambda: dm.setup("fit"), (str(folder / "metadata.csv"), twin[1])


def celeba_image_in_two_partitions(tmp_path: Path, _: pytest.MonkeyPatch) -> tuple[Action, tuple[str, ...]]:
    folder, dm = _celeba(tmp_path)
    path = folder / "list_eval_partition.txt"
    first = path.read_text().splitlines()[0].split()[0]  # a training image
    path.write_text(path.read_text() + f"{first} 2\n")
    return lambda: dm.setup("fit"), (str(path), first, "test")


def celeba_csv_image_in_two_partitions(tmp_path: Path, _: pytest.MonkeyPatch) -> tuple[Action, tuple[str, ...]]:
    folder, dm = _celeba(tmp_path, layout="csv")
    path = folder / "list_eval_partition.csv"
    first = path.read_text().splitlines()[1].split(",")[0]
    path.write_text(path.read_text() + f"{first},1\n")
    return lambda: dm.setup("fit"), (str(path), first, "val")


def celeba_attribute_rows_disagree(tmp_path: Path, _: pytest.MonkeyPatch) -> tuple[Action, tuple[str, ...]]:
    folder, dm = _celeba(tmp_path)
    path = folder / "list_attr_celeba.txt"
    row = path.read_text().splitlines()[2]
    name, *values = row.split()
    flipped = [str(-int(v)) for v in values]
    path.write_text(path.read_text() + " ".join([name, *flipped]) + "\n")
    return lambda: dm.setup("fit"), (str(path), name)


def _damaged_waterbirds_image(how: str) -> Callable[[Path, pytest.MonkeyPatch], tuple[Action, tuple[str, ...]]]:
    def build(tmp_path: Path, _: pytest.MonkeyPatch) -> tuple[Action, tuple[str, ...]]:
        folder, dm = _waterbirds(tmp_path)
        victim = damage_file(_waterbirds_image(folder, split=0, nth=3), how)
        hint = "MAX_IMAGE_PIXELS" if how == "huge" else "replace it"
        return read_everything(dm), (str(victim), hint)

    return build


def celeba_garbage_image(tmp_path: Path, _: pytest.MonkeyPatch) -> tuple[Action, tuple[str, ...]]:
    folder, dm = _celeba(tmp_path)
    victim = damage_file(folder / "img_align_celeba" / "000002.jpg", "garbage")
    return read_everything(dm), (str(victim),)


def domainbed_truncated_image(tmp_path: Path, _: pytest.MonkeyPatch) -> tuple[Action, tuple[str, ...]]:
    folder = write_tiny_domainbed(tmp_path / "data", "PACS", per_class=2)
    victim = damage_file(folder / "cartoon" / "dog" / "pic_000.jpg", "truncated")
    dm = DomainBedDataModule(tmp_path / "data", batch_size=16, image_size=8, download=False)
    return read_everything(dm), (str(victim),)


def check_files_lists_every_unreadable_file(tmp_path: Path, _: pytest.MonkeyPatch) -> tuple[Action, tuple[str, ...]]:
    folder, dm = _waterbirds(tmp_path)
    first = damage_file(_waterbirds_image(folder, split=1, nth=0), "empty")
    second = damage_file(_waterbirds_image(folder, split=2, nth=1), "garbage")
    return dm.check_files, (str(first), str(second), "2 of the 44 image files")


def _dominoes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = write_tiny_dominoes(tmp_path / "data")
    patch_cifar_md5(monkeypatch, root / "cifar-10-batches-py")
    return root


def mnist_garbage_images_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Action, tuple[str, ...]]:
    root = _dominoes(tmp_path, monkeypatch)
    victim = damage_file(root / "MNIST" / "raw" / "train-images-idx3-ubyte", "garbage")
    return CifarMnistDataModule(root).prepare_data, (str(victim), "download=True")


def mnist_truncated_labels_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Action, tuple[str, ...]]:
    root = _dominoes(tmp_path, monkeypatch)
    victim = damage_file(root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte", "truncated")
    return CifarMnistDataModule(root).prepare_data, (str(victim), "truncated")


def fmnist_labels_of_another_release(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Action, tuple[str, ...]]:
    root = _dominoes(tmp_path, monkeypatch)
    other = write_tiny_mnist(tmp_path / "other", "fmnist", train_per_class=11)
    raw = root / "FashionMNIST" / "raw"
    (raw / "train-labels-idx1-ubyte").write_bytes((other / "train-labels-idx1-ubyte").read_bytes())
    return FmnistMnistDataModule(root).prepare_data, (str(raw / "train-images-idx3-ubyte"), "110 labels")


def cifar_corrupt_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Action, tuple[str, ...]]:
    root = _dominoes(tmp_path, monkeypatch)
    victim = damage_file(root / "cifar-10-batches-py" / "data_batch_3", "truncated")
    return CifarMnistDataModule(root).prepare_data, (str(victim), "md5")


def _root_is_a_file(make: Callable[[Path], object]) -> Callable[[Path, pytest.MonkeyPatch], tuple[Action, tuple]]:
    def build(tmp_path: Path, _: pytest.MonkeyPatch) -> tuple[Action, tuple[str, ...]]:
        root = tmp_path / "data.tar.gz"
        root.write_bytes(b"not a folder")
        return lambda: make(root), (f"root={str(root)!r}", "is a file")

    return build


def waterbirds_read_only_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Action, tuple[str, ...]]:
    root = _read_only(tmp_path / "data", monkeypatch)
    archive = write_tiny_waterbirds_tarball(tmp_path / "served" / f"{ORIGINAL}.tar.gz")
    dm = WaterbirdsDataModule(root, download=True, url=archive.as_uri())
    return dm.prepare_data, (str(root), "read-only")


def domainbed_read_only_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Action, tuple[str, ...]]:
    root = _read_only(tmp_path / "data", monkeypatch)
    return DomainBedDataModule(root, dataset="VLCS", download=True).prepare_data, (str(root), "read-only")


def dominoes_read_only_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Action, tuple[str, ...]]:
    root = _dominoes(tmp_path, monkeypatch)
    _read_only(root, monkeypatch)
    return CifarMnistDataModule(root).prepare_data, (str(root / "dominoes"), "cache")


def _argument(make: Callable[[Path], object], *culprit: str) -> Callable[[Path, pytest.MonkeyPatch], tuple]:
    def build(tmp_path: Path, _: pytest.MonkeyPatch) -> tuple[Action, tuple[str, ...]]:
        return lambda: make(tmp_path), culprit

    return build


CASES = [
    # archives and downloads
    Case("symlink-escaping-once-top-is-stripped", ValueError, symlink_escaping_once_top_is_stripped),
    Case("hardlink-outside-the-top-folder", ValueError, hardlink_outside_the_top_folder),
    Case("top-folder-that-is-a-symlink", ValueError, top_folder_that_is_a_symlink),
    Case("absolute-symlink", ValueError, absolute_symlink),
    Case("zip-slip", ValueError, zip_slip),
    Case("truncated-tarball", DownloadError, truncated_tarball),
    Case("html-page-saved-as-archive", DownloadError, html_page_saved_as_archive),
    Case("empty-archive-file", DownloadError, empty_archive_file),
    Case("two-top-folders-with-strip", ValueError, two_top_folders_with_strip),
    Case("missing-archive", FileNotFoundError, missing_archive),
    Case("unreachable-file-url", DownloadError, unreachable_file_url),
    Case("checksum-mismatch", DownloadError, checksum_mismatch),
    Case("waterbirds-tarball-with-escaping-link", DownloadError, waterbirds_tarball_with_escaping_link),
    # metadata that lists an image twice
    Case("waterbirds-image-in-train-and-test", ValueError, _waterbirds_leak("2")),
    Case("waterbirds-image-in-train-and-val", ValueError, _waterbirds_leak("1")),
    Case("waterbirds-duplicate-with-other-label", ValueError, waterbirds_duplicate_with_other_label),
    Case("celeba-image-in-two-partitions", ValueError, celeba_image_in_two_partitions),
    Case("celeba-csv-image-in-two-partitions", ValueError, celeba_csv_image_in_two_partitions),
    Case("celeba-attribute-rows-disagree", ValueError, celeba_attribute_rows_disagree),
    # unreadable images and sources
    Case("waterbirds-garbage-image", UnreadableImageError, _damaged_waterbirds_image("garbage")),
    Case("waterbirds-truncated-image", UnreadableImageError, _damaged_waterbirds_image("truncated")),
    Case("waterbirds-empty-image", UnreadableImageError, _damaged_waterbirds_image("empty")),
    Case("waterbirds-decompression-bomb", UnreadableImageError, _damaged_waterbirds_image("huge")),
    Case("celeba-garbage-image", UnreadableImageError, celeba_garbage_image),
    Case("domainbed-truncated-image", UnreadableImageError, domainbed_truncated_image),
    Case("check-files-lists-every-unreadable-file", UnreadableImageError, check_files_lists_every_unreadable_file),
    Case("mnist-garbage-images-file", RuntimeError, mnist_garbage_images_file),
    Case("mnist-truncated-labels-file", RuntimeError, mnist_truncated_labels_file),
    Case("fmnist-labels-of-another-release", RuntimeError, fmnist_labels_of_another_release),
    Case("cifar-corrupt-batch", RuntimeError, cifar_corrupt_batch),
    # data roots
    Case("waterbirds-root-is-a-file", ValueError, _root_is_a_file(lambda r: WaterbirdsDataModule(r))),
    Case("domainbed-root-is-a-file", ValueError, _root_is_a_file(lambda r: DomainBedDataModule(r))),
    Case("dominoes-root-is-a-file", ValueError, _root_is_a_file(lambda r: CifarMnistDataModule(r))),
    Case("celeba-root-is-a-file", ValueError, _root_is_a_file(lambda r: CelebADataModule(r))),
    Case("waterbirds-read-only-root-with-download", PermissionError, waterbirds_read_only_root),
    Case("domainbed-read-only-root-with-download", PermissionError, domainbed_read_only_root),
    Case("dominoes-read-only-root-for-the-cache", PermissionError, dominoes_read_only_root),
    # arguments, refused in __init__
    Case("batch-size-zero", ValueError, _argument(lambda r: WaterbirdsDataModule(r, batch_size=0), "batch_size")),
    Case("num-workers-negative", ValueError, _argument(lambda r: CelebADataModule(r, num_workers=-1), "num_workers")),
    Case(
        "unknown-test-domain",
        ValueError,
        _argument(lambda r: DomainBedDataModule(r, test_domain="Cartoon"), "test_domain", "'Cartoon'", "cartoon"),
    ),
    Case(
        "unknown-celeba-target",
        ValueError,
        _argument(lambda r: CelebADataModule(r, target="Blonde_Hair"), "target", "'Blonde_Hair'", "Blond_Hair"),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_naming_the_culprit_and_changes_nothing(
    case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    action, culprits = case.build(tmp_path, monkeypatch)
    before = snapshot(tmp_path)
    with pytest.raises(case.error) as info:
        action()
    message = str(info.value)
    for culprit in culprits:
        assert culprit in message, f"{culprit!r} not in {message!r}"
    assert snapshot(tmp_path) == before
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith((".extracting", ".part", ".partial"))]


def test_the_table_covers_every_item_of_the_issue() -> None:
    assert len(CASES) >= 20
    assert len({c.id for c in CASES}) == len(CASES)


def test_identical_duplicate_rows_warn_with_counts_and_load_once(tmp_path: Path) -> None:
    folder, dm = _waterbirds(tmp_path)
    rows = _metadata_rows(folder)
    _write_metadata(folder, [*rows, rows[1], rows[2], rows[1]])
    with pytest.warns(UserWarning, match=r"metadata.csv: 3 duplicate row\(s\) of 2 image\(s\)"):
        dm.setup("fit")
    files = [*dm.train_dataset.files, *dm.val_dataset.files, *dm.test_dataset.files]
    assert len(files) == len(set(files)) == len(rows) - 1


def test_identical_duplicate_celeba_partition_rows_warn_and_load_once(tmp_path: Path) -> None:
    folder, dm = _celeba(tmp_path)
    path = folder / "list_eval_partition.txt"
    first = path.read_text().splitlines()[0]
    path.write_text(path.read_text() + first + "\n")
    with pytest.warns(UserWarning, match=r"list_eval_partition.txt: 1 duplicate row\(s\) of 1 image\(s\)"):
        dm.setup("fit")
    assert len(dm.train_dataset) == len(set(dm.train_dataset.files))


def test_check_files_counts_every_readable_image(tmp_path: Path) -> None:
    _, dm = _waterbirds(tmp_path)
    assert dm.check_files() == sum(map(sum, TINY_WATERBIRDS_COUNTS.values()))
    write_tiny_domainbed(tmp_path / "db", "PACS", per_class=2)
    assert DomainBedDataModule(tmp_path / "db", download=False).check_files() == 4 * 7 * 2


def test_unreadable_image_error_survives_a_dataloader_worker(tmp_path: Path) -> None:
    folder, _ = _waterbirds(tmp_path)
    victim = damage_file(_waterbirds_image(folder, split=0, nth=0), "garbage")
    dm = WaterbirdsDataModule(tmp_path / "data", batch_size=64, image_size=8)
    dm.setup("fit")
    loader = DataLoader(dm.train_dataset, batch_size=64, num_workers=1)
    batches = iter(loader)
    try:
        next(batches)
    except UnreadableImageError as error:
        message = str(error)
        # its traceback holds the iterator in a reference cycle, which a later garbage collection would tear down
        # in an order that leaves the worker waiting 5 s for its queues: drop it, and the worker stops now
        error.__traceback__ = None
    else:
        pytest.fail("a garbage image was read without an error")
    del batches
    assert str(victim) in message


def test_tiny_sources_still_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _dominoes(tmp_path, monkeypatch)
    dm = CifarMnistDataModule(root)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.check_files() == 0  # held in memory: setup read them all
    assert isinstance(dm.train_dataset[0].x, torch.Tensor)
