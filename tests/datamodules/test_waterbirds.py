"""Tests of WaterbirdsDataModule on tiny real-format copies: both layouts, groups, probes, bad input, download."""

from __future__ import annotations

import csv
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import torch

from lightning_sam.batch import FeatureBatch
from lightning_sam.datamodules import WaterbirdsDataModule
from lightning_sam.datamodules._download import DownloadError
from lightning_sam.datamodules.demos import TINY_WATERBIRDS_COUNTS, write_tiny_waterbirds

ORIGINAL = "waterbird_complete95_forest2water2"


def _datamodule(root: Path, **kwargs) -> WaterbirdsDataModule:
    return WaterbirdsDataModule(root=root, **{"batch_size": 4, "image_size": 16, **kwargs})


def _setup(dm: WaterbirdsDataModule) -> WaterbirdsDataModule:
    with pytest.warns(UserWarning, match="loading this subset"):
        dm.setup("fit")
    return dm


def _rewrite_metadata(folder: Path, edit) -> None:
    path = folder / "metadata.csv"
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    rows = edit(rows)
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)


@pytest.mark.parametrize("layout", ["original", "wilds"])
def test_both_layouts_give_standard_splits_groups_and_features(tmp_path: Path, layout: str) -> None:
    write_tiny_waterbirds(tmp_path, layout=layout)
    dm = _setup(_datamodule(tmp_path))
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == tuple(
        sum(TINY_WATERBIRDS_COUNTS[s]) for s in (0, 1, 2)
    )
    assert dm.train_group_counts().tolist() == list(TINY_WATERBIRDS_COUNTS[0])
    assert dm.feature_names == ("background", "bird")
    assert dm.num_classes == 2
    assert dm.num_groups == 4
    # features are (place, y) and group is 2y + place, row by row, against metadata.csv
    with open(dm.find_folder() / "metadata.csv", newline="") as f:
        truth = {r["img_filename"]: (int(r["y"]), int(r["place"]), int(r["split"])) for r in csv.DictReader(f)}
    for ds, split in ((dm.train_dataset, 0), (dm.val_dataset, 1), (dm.test_dataset, 2)):
        for i, path in enumerate(ds.files):
            y, place, s = truth[path.relative_to(dm.find_folder()).as_posix()]
            assert s == split
            assert (ds.y[i].item(), ds.features[i].tolist(), ds.group[i].item()) == (y, [place, y], 2 * y + place)


def test_batches_follow_the_feature_batch_contract(tmp_path: Path) -> None:
    write_tiny_waterbirds(tmp_path)
    dm = _setup(_datamodule(tmp_path))
    batch = next(iter(dm.train_dataloader()))
    assert isinstance(batch, FeatureBatch)
    assert batch.x.shape == (4, 3, 16, 16)
    assert batch.x.dtype == torch.float32
    assert batch.features.shape == (4, 2)
    assert batch.features.dtype == torch.long
    assert torch.equal(batch.group, 2 * batch.y + batch.features[:, 0])


def test_probe_splits_are_group_balanced_and_decorrelated(tmp_path: Path) -> None:
    write_tiny_waterbirds(tmp_path)
    dm = _setup(_datamodule(tmp_path, seed=3))
    probe_train, probe_test = dm.probe_train_dataset, dm.probe_test_dataset
    # equal counts in every (y, place) cell: background and bird are independent in both probe sets
    assert Counter(probe_train.group.tolist()) == {g: min(TINY_WATERBIRDS_COUNTS[1]) for g in range(4)}
    assert Counter(probe_test.group.tolist()) == {g: min(TINY_WATERBIRDS_COUNTS[2]) for g in range(4)}
    assert set(probe_train.files) <= set(dm.val_dataset.files)
    assert set(probe_test.files) <= set(dm.test_dataset.files)
    # seeded: the same seed draws the same probe set
    again = _setup(_datamodule(tmp_path, seed=3))
    assert again.probe_test_dataset.files == probe_test.files


def test_probe_source_train_and_per_group_size(tmp_path: Path) -> None:
    write_tiny_waterbirds(tmp_path)
    dm = _setup(_datamodule(tmp_path, probe_source="train", probe_per_group=2))
    assert Counter(dm.probe_train_dataset.group.tolist()) == {g: 2 for g in range(4)}
    assert set(dm.probe_train_dataset.files) <= set(dm.train_dataset.files)


def test_probe_larger_than_smallest_group_is_an_error(tmp_path: Path) -> None:
    write_tiny_waterbirds(tmp_path)
    with pytest.raises(ValueError, match="probe_per_group"), pytest.warns(UserWarning, match="subset"):
        _datamodule(tmp_path, probe_per_group=50).setup("fit")


def test_invalid_arguments_name_the_argument(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="probe_source"):
        _datamodule(tmp_path, probe_source="test")
    with pytest.raises(ValueError, match="image_size"):
        _datamodule(tmp_path, image_size=0)


def test_missing_root_names_both_layouts_and_the_manual_steps(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        _datamodule(tmp_path / "nowhere").setup("fit")
    message = str(info.value)
    assert "does not exist" in message
    assert ORIGINAL in message
    assert "waterbirds_v1.0" in message
    assert "nlp.stanford.edu" in message
    assert "tar -xzf" in message


def test_missing_metadata_file_is_an_error(tmp_path: Path) -> None:
    (write_tiny_waterbirds(tmp_path) / "metadata.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"metadata.csv"):
        _datamodule(tmp_path).setup("fit")


def test_missing_column_is_an_error_naming_it(tmp_path: Path) -> None:
    folder = write_tiny_waterbirds(tmp_path)
    _rewrite_metadata(folder, lambda rows: [r[:4] + r[5:] for r in rows])  # drop "place"
    with pytest.raises(ValueError, match=r"metadata.csv lacks column\(s\) \['place'\]"):
        _datamodule(tmp_path).setup("fit")


def test_unknown_split_code_is_an_error_naming_the_line(tmp_path: Path) -> None:
    folder = write_tiny_waterbirds(tmp_path)
    _rewrite_metadata(folder, lambda rows: [*rows[:3], [*rows[3][:3], "7", *rows[3][4:]], *rows[4:]])
    with pytest.raises(ValueError, match=r"line 4: unknown split value '7'.*0 train, 1 val, 2 test"):
        _datamodule(tmp_path).setup("fit")


def test_missing_image_is_an_error_naming_it(tmp_path: Path) -> None:
    folder = write_tiny_waterbirds(tmp_path)
    with open(folder / "metadata.csv", newline="") as f:
        victim = list(csv.DictReader(f))[5]["img_filename"]
    (folder / victim).unlink()
    with pytest.raises(FileNotFoundError, match=f"1 of the 44 images.*{victim}"):
        _datamodule(tmp_path).setup("fit")


def _tarball(tmp_path: Path) -> Path:
    folder = write_tiny_waterbirds(tmp_path / "source")
    archive = tmp_path / f"{ORIGINAL}.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(folder, arcname=ORIGINAL)
    return archive


def test_download_from_file_url_verifies_and_moves_into_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = _tarball(tmp_path)
    # the fixture stands in for the full release: strict verification against its counts
    monkeypatch.setattr(WaterbirdsDataModule, "split_sizes", tuple(sum(TINY_WATERBIRDS_COUNTS[s]) for s in (0, 1, 2)))
    monkeypatch.setattr(WaterbirdsDataModule, "train_group_counts_canonical", TINY_WATERBIRDS_COUNTS[0])
    root = tmp_path / "data"
    dm = _datamodule(root, download=True, url=archive.as_uri())
    dm.prepare_data()
    dm.setup("fit")
    assert sorted(p.name for p in root.iterdir()) == [ORIGINAL]  # no archive, no temporary folder
    assert dm.train_group_counts().tolist() == list(TINY_WATERBIRDS_COUNTS[0])


def test_download_failing_strict_verification_leaves_nothing(tmp_path: Path) -> None:
    archive = _tarball(tmp_path)  # counts differ from the canonical 4,795 / 1,199 / 5,794
    root = tmp_path / "data"
    with pytest.raises(DownloadError, match=r"sizes \(16, 12, 16\).*expected \(4795, 1199, 5794\)"):
        _datamodule(root, download=True, url=archive.as_uri()).prepare_data()
    assert list(root.iterdir()) == []


def test_corrupted_download_is_a_clear_error_and_leaves_nothing(tmp_path: Path) -> None:
    archive = _tarball(tmp_path)
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    root = tmp_path / "data"
    with pytest.raises(DownloadError) as info:
        _datamodule(root, download=True, url=archive.as_uri()).prepare_data()
    assert "corrupt, truncated" in str(info.value)
    assert "tar -xzf" in str(info.value)
    assert list(root.iterdir()) == []


def test_unreachable_source_gives_manual_steps_and_layout(tmp_path: Path) -> None:
    url = (tmp_path / "gone.tar.gz").as_uri()
    with pytest.raises(DownloadError) as info:
        _datamodule(tmp_path / "data", download=True, url=url).prepare_data()
    assert url in str(info.value)
    assert f"{ORIGINAL}/metadata.csv" in str(info.value).replace("\\", "/")
    assert list((tmp_path / "data").iterdir()) == []
