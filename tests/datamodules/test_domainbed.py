"""DomainBed datasets read from fixture folder trees in DomainBed's layout, and downloaded from file:// archives."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from lightning_sam.datamodules._download import DownloadError
from lightning_sam.datamodules.demos import write_tiny_domainbed
from lightning_sam.datamodules.domainbed import DATASETS, Archive, DomainBedDataModule

PACS_CLASSES = DATASETS["PACS"].classes
SUBSET = "ignore:.*(canonical|subset).*:UserWarning"


def _setup(root: Path, **kwargs) -> DomainBedDataModule:
    dm = DomainBedDataModule(root, image_size=8, **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def _labels(dataset) -> list[tuple[str, str, int, int, int]]:
    """(domain folder, class folder, y, domain feature, group) of every example, read without decoding images."""
    return [
        (f.parent.parent.name, f.parent.name, int(y), int(feat[0]), int(g))
        for f, y, feat, g in zip(dataset.files, dataset.y, dataset.features, dataset.group)
    ]


@pytest.mark.filterwarnings(SUBSET)
def test_labels_follow_one_class_list_when_a_domain_lacks_a_class(tmp_path: Path) -> None:
    # cartoon has no "dog", the first class: a per-domain ImageFolder would give its elephants label 0
    write_tiny_domainbed(tmp_path, "PACS", per_class=5, lacking=(("cartoon", "dog"), ("sketch", "house")))
    dm = _setup(tmp_path, test_domain="photo")
    assert dm.classes == PACS_CLASSES
    assert dm.num_classes == 7
    assert dm.num_groups == 28
    assert dm.feature_names == ("domain", "class")
    every = _labels(dm.probe_train_dataset) + _labels(dm.probe_test_dataset)
    assert len(every) == 4 * 7 * 5 - 2 * 5
    for domain, cls, y, d, g in every:
        assert PACS_CLASSES[y] == cls
        assert dm.domains[d] == domain
        assert g == d * 7 + y
    assert {y for domain, _, y, _, _ in every if domain == "cartoon"} == set(range(1, 7))


@pytest.mark.filterwarnings(SUBSET)
def test_hidden_folders_and_files_are_ignored(tmp_path: Path) -> None:
    write_tiny_domainbed(tmp_path, "PACS", per_class=2, hidden=True)
    with pytest.warns(UserWarning, match="canonical") as record:
        dm = _setup(tmp_path)
    assert not any("ignoring folders" in str(w.message) for w in record)
    files = dm.probe_train_dataset.files + dm.probe_test_dataset.files
    assert len(files) == 4 * 7 * 2
    assert not any("checkpoint" in str(f) for f in files)


@pytest.mark.filterwarnings(SUBSET)
def test_every_domain_is_split_80_20_and_the_test_domain_held_out(tmp_path: Path) -> None:
    write_tiny_domainbed(tmp_path, "VLCS", per_class=10)  # 50 images per domain: 40 in, 10 out
    dm = _setup(tmp_path, dataset="VLCS", test_domain="SUN09", seed=1)
    train, val = _labels(dm.train_dataset), _labels(dm.val_dataset)
    assert len(train) == 3 * 40
    assert len(val) == 3 * 10
    assert {t[0] for t in train} == {t[0] for t in val} == {"Caltech101", "LabelMe", "VOC2007"}
    assert {t[0] for t in _labels(dm.test_dataset)} == {"SUN09"}
    assert len(dm.test_dataset) == 50
    fit, evaluate = set(dm.target_fit_dataset.files), set(dm.target_eval_dataset.files)
    assert len(fit) == 40
    assert len(evaluate) == 10
    assert fit | evaluate == set(dm.test_dataset.files)
    assert not set(dm.train_dataset.files) & set(dm.val_dataset.files)
    assert len(dm.probe_train_dataset) == 160
    assert len(dm.probe_test_dataset) == 40
    assert dm.train_group_counts().sum() == 120
    again = _setup(tmp_path, dataset="VLCS", test_domain="SUN09", seed=1)
    other = _setup(tmp_path, dataset="VLCS", test_domain="SUN09", seed=2)
    assert again.val_dataset.files == dm.val_dataset.files
    assert other.val_dataset.files != dm.val_dataset.files
    fit_loader, eval_loader = dm.transfer_dataloaders()
    batch = next(iter(eval_loader))
    assert batch.x.shape == (10, 3, 8, 8)
    assert len(fit_loader.dataset) == 40


@pytest.mark.filterwarnings(SUBSET)
def test_office_home_classes_are_the_sorted_folders_found(tmp_path: Path) -> None:
    write_tiny_domainbed(tmp_path, "OfficeHome", per_class=3, classes=("Bike", "Alarm_Clock", "Backpack"))
    with pytest.warns(UserWarning, match="3 of the 65 classes"):
        dm = _setup(tmp_path, dataset="OfficeHome", test_domain="Real World")
    assert dm.classes == ("Alarm_Clock", "Backpack", "Bike")
    assert dm.num_classes == 65
    assert all(dm.classes[y] == cls for _, cls, y, _, _ in _labels(dm.train_dataset))


def test_unknown_test_domain_error_names_the_valid_domains(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"'Cartoon' is not a domain of PACS.*\['art_painting', 'cartoon'"):
        DomainBedDataModule(tmp_path, dataset="PACS", test_domain="Cartoon")


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"dataset": "ColoredMNIST"}, "dataset"),
        ({"holdout_fraction": 1.0}, "holdout_fraction"),
        ({"image_size": 0}, "image_size"),
    ],
)
def test_invalid_argument_is_named_in_the_error(tmp_path: Path, kwargs: dict, argument: str) -> None:
    with pytest.raises(ValueError, match=argument):
        DomainBedDataModule(tmp_path, **kwargs)


def test_empty_class_folder_is_an_error(tmp_path: Path) -> None:
    folder = write_tiny_domainbed(tmp_path, "PACS", per_class=1)
    for image in (folder / "sketch" / "horse").iterdir():
        image.unlink()
    with pytest.raises(ValueError, match=r"sketch/horse holds no images"):
        _setup(tmp_path)


def test_unknown_class_folder_is_an_error(tmp_path: Path) -> None:
    folder = write_tiny_domainbed(tmp_path, "PACS", per_class=1)
    (folder / "photo" / "cat").mkdir()
    with pytest.raises(ValueError, match=r"\['cat'\].*not PACS classes"):
        _setup(tmp_path)


def test_missing_domain_folder_is_an_error(tmp_path: Path) -> None:
    folder = write_tiny_domainbed(tmp_path, "PACS", per_class=1)
    (folder / "sketch").rename(folder / "Sketch")
    with pytest.raises(FileNotFoundError, match=r"\['sketch'\] missing"):
        _setup(tmp_path)


def test_missing_dataset_without_download_gives_the_layout_and_sources(tmp_path: Path) -> None:
    with pytest.raises(
        FileNotFoundError, match=r"(?s)download=False.*1JFr8f805nMUelQWWmfnJR3y4_SYoN5Pd.*<domain>/<class>"
    ):
        DomainBedDataModule(tmp_path, dataset="PACS", download=False).prepare_data()


def test_data_on_disk_with_non_canonical_counts_loads_with_a_warning(tmp_path: Path) -> None:
    write_tiny_domainbed(tmp_path, "PACS", per_class=1)
    with pytest.warns(UserWarning, match="art_painting: 7 images, expected 2048"):
        _setup(tmp_path)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_canonical_domains_are_sorted_folder_names(name: str) -> None:
    assert list(DATASETS[name].domains) == sorted(DATASETS[name].domains)


def _zip_folder(folder: Path, archive: Path, top: str) -> None:
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, f"{top}/{path.relative_to(folder)}")


@pytest.mark.filterwarnings(SUBSET)
def test_download_keeps_only_a_complete_verified_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = write_tiny_domainbed(tmp_path / "source", "PACS", per_class=2, hidden=False)
    archive = tmp_path / "served" / "PACS.zip"
    archive.parent.mkdir()
    _zip_folder(source, archive, "kfold")  # DomainBed's PACS.zip unpacks to kfold/<domain>/<class>/
    sizes = dict.fromkeys(DATASETS["PACS"].domains, 14)
    spec = DATASETS["PACS"]._replace(
        archives=(Archive("PACS.zip", url=archive.as_uri()),), domain_sizes=sizes, total=56
    )
    monkeypatch.setitem(DATASETS, "PACS", spec)
    root = tmp_path / "data"

    good = archive.read_bytes()
    archive.write_bytes(good[: len(good) // 2])  # a transfer cut short
    with pytest.raises(DownloadError, match="corrupt"):
        DomainBedDataModule(root, dataset="PACS").prepare_data()
    assert list(root.iterdir()) == []  # no PACS/ and no temporary folder left behind

    truncated_tree = tmp_path / "partial"
    write_tiny_domainbed(truncated_tree, "PACS", per_class=2, hidden=False, lacking=(("photo", "dog"),))
    _zip_folder(truncated_tree / "PACS", archive, "kfold")  # a valid archive with too few images
    with pytest.raises(DownloadError, match="photo: 12 images, expected 14"):
        DomainBedDataModule(root, dataset="PACS").prepare_data()
    assert list(root.iterdir()) == []

    archive.write_bytes(good)
    dm = _setup(root, dataset="PACS", test_domain="cartoon")
    # 14 images per domain, round(0.2 * 14) = 3 of them "out"
    assert [p.name for p in root.iterdir()] == ["PACS"]
    assert len(dm.train_dataset) == 3 * 11


def test_terra_incognita_download_keeps_domainbed_locations_and_classes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = tmp_path / "served"
    served.mkdir()
    images = {f"img{i}.jpg": i for i in range(6)}
    with tarfile.open(served / "eccv_18_all_images_sm.tar.gz", "w:gz") as tf:
        for name in images:
            buffer = io.BytesIO()
            Image.new("RGB", (8, 8)).save(buffer, "JPEG")
            info = tarfile.TarInfo(f"eccv_18_all_images_sm/{name}")
            info.size = buffer.tell()
            buffer.seek(0)
            tf.addfile(info, buffer)
    annotations = {
        "categories": [{"id": 1, "name": "bobcat"}, {"id": 2, "name": "deer"}, {"id": 3, "name": "empty"}],
        "images": [
            {"id": "a", "file_name": "img0.jpg", "location": "38"},
            {"id": "b", "file_name": "img1.jpg", "location": "100"},
            {"id": "c", "file_name": "img2.jpg", "location": 43},  # some releases store locations as numbers
            {"id": "d", "file_name": "img3.jpg", "location": "46"},
            {"id": "e", "file_name": "img4.jpg", "location": "33"},  # not one of DomainBed's locations
            {"id": "f", "file_name": "img5.jpg", "location": "38"},  # only a class DomainBed drops
        ],
        "annotations": [
            {"image_id": "a", "category_id": 1},
            {"image_id": "b", "category_id": 3},
            {"image_id": "c", "category_id": 1},
            {"image_id": "d", "category_id": 3},
            {"image_id": "e", "category_id": 1},
            {"image_id": "f", "category_id": 2},
        ],
    }
    with zipfile.ZipFile(served / "caltech_camera_traps.json.zip", "w") as zf:
        zf.writestr("caltech_images_20210113.json", json.dumps(annotations))
    archives = tuple(
        Archive(a.filename, url=(served / a.filename).as_uri()) for a in DATASETS["TerraIncognita"].archives
    )
    monkeypatch.setitem(DATASETS, "TerraIncognita", DATASETS["TerraIncognita"]._replace(archives=archives, total=4))

    with pytest.warns(UserWarning, match="2 of the 10 classes"):
        dm = _setup(tmp_path / "data", dataset="TerraIncognita", test_domain="location_46")
    examples = _labels(dm.probe_train_dataset) + _labels(dm.probe_test_dataset)
    files = dm.probe_train_dataset.files + dm.probe_test_dataset.files
    assert sorted((ex[0], ex[1], f.name) for ex, f in zip(examples, files)) == [
        ("location_100", "empty", "img1.jpg"),
        ("location_38", "bobcat", "img0.jpg"),
        ("location_43", "bobcat", "img2.jpg"),
        ("location_46", "empty", "img3.jpg"),
    ]
    assert {(cls, y) for _, cls, y, _, _ in examples} == {("bobcat", 1), ("empty", 5)}  # canonical class indices
