"""Tests of CelebADataModule on tiny real-format copies: both layouts, attributes, probes, bad input, download."""

from __future__ import annotations

import zipfile
from collections import Counter
from pathlib import Path

import pytest
import torch

import lightning_sam.datamodules.celeba as celeba
from lightning_sam.batch import FeatureBatch
from lightning_sam.datamodules import CelebADataModule
from lightning_sam.datamodules._download import DownloadError, download_url, file_md5
from lightning_sam.datamodules.demos import CELEBA_ATTRIBUTES, TINY_CELEBA_COUNTS, write_tiny_celeba

SIZES = tuple(sum(TINY_CELEBA_COUNTS[s]) for s in (0, 1, 2))


def _datamodule(root: Path, **kwargs) -> CelebADataModule:
    return CelebADataModule(root=root, **{"batch_size": 4, "image_size": 16, **kwargs})


def _setup(dm: CelebADataModule) -> CelebADataModule:
    with pytest.warns(UserWarning, match="loading this subset"):
        dm.setup("fit")
    return dm


def _attribute_table(folder: Path) -> dict[str, dict[str, int]]:
    """Independent reading of the fixture's attribute file, by attribute name."""
    if (folder / "list_attr_celeba.txt").is_file():
        lines = (folder / "list_attr_celeba.txt").read_text().splitlines()[2:]
        rows = [line.split() for line in lines]
    else:
        rows = [line.split(",") for line in (folder / "list_attr_celeba.csv").read_text().splitlines()[1:]]
    return {r[0]: dict(zip(CELEBA_ATTRIBUTES, map(int, r[1:]), strict=True)) for r in rows}


@pytest.mark.parametrize("layout", ["torchvision", "csv", "kaggle"])
def test_all_layouts_give_official_splits_groups_and_features(tmp_path: Path, layout: str) -> None:
    folder = write_tiny_celeba(tmp_path, layout=layout)
    dm = _setup(_datamodule(tmp_path))
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == SIZES
    assert dm.train_group_counts().tolist() == list(TINY_CELEBA_COUNTS[0])
    assert dm.feature_names == ("hair", "gender")
    table = _attribute_table(folder)
    for ds in (dm.train_dataset, dm.val_dataset, dm.test_dataset):
        for i, path in enumerate(ds.files):
            blond, male = table[path.name]["Blond_Hair"] == 1, table[path.name]["Male"] == 1
            assert (ds.y[i].item(), ds.features[i].tolist(), ds.group[i].item()) == (
                blond,
                [blond, male],
                2 * blond + male,
            )


def test_target_and_spurious_are_configurable_by_attribute_name(tmp_path: Path) -> None:
    # other attributes are random in the fixture: enough images that every (Smiling, Young) group occurs
    folder = write_tiny_celeba(tmp_path, counts={0: (12, 10, 8, 4), 1: (10,) * 4, 2: (10,) * 4})
    dm = _setup(_datamodule(tmp_path, target="Smiling", spurious="Young"))
    assert dm.feature_names == ("smiling", "young")
    table = _attribute_table(folder)
    ds = dm.test_dataset
    expected = [[table[p.name]["Smiling"] == 1, table[p.name]["Young"] == 1] for p in ds.files]
    assert ds.features.tolist() == expected


def test_batches_follow_the_feature_batch_contract(tmp_path: Path) -> None:
    write_tiny_celeba(tmp_path)
    dm = _setup(_datamodule(tmp_path))
    batch = next(iter(dm.val_dataloader()))
    assert isinstance(batch, FeatureBatch)
    assert batch.x.shape == (4, 3, 16, 16)
    assert torch.equal(batch.y, batch.features[:, 0])
    assert torch.equal(batch.group, 2 * batch.y + batch.features[:, 1])


def test_probe_splits_are_group_balanced_and_decorrelated(tmp_path: Path) -> None:
    write_tiny_celeba(tmp_path)
    dm = _setup(_datamodule(tmp_path))
    for probe, split, counts in (
        (dm.probe_train_dataset, dm.val_dataset, TINY_CELEBA_COUNTS[1]),
        (dm.probe_test_dataset, dm.test_dataset, TINY_CELEBA_COUNTS[2]),
    ):
        cells = Counter(map(tuple, probe.features.tolist()))  # (hair, gender) cells
        assert cells == {(h, g): min(counts) for h in (0, 1) for g in (0, 1)}
        assert set(probe.files) <= set(split.files)


def test_count_line_disagreeing_with_rows_warns(tmp_path: Path) -> None:
    folder = write_tiny_celeba(tmp_path)
    path = folder / "list_attr_celeba.txt"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("202599\n" + "".join(lines[1:]))
    with pytest.warns(UserWarning, match="count line says 202599 images but 37 rows"):
        _datamodule(tmp_path).setup("fit")


def test_unknown_attribute_is_an_error_with_suggestions(tmp_path: Path) -> None:
    write_tiny_celeba(tmp_path)
    with pytest.raises(
        ValueError, match=r"unknown CelebA attribute 'Blonde_Hair' for target.*Did you mean \['Blond_Hair'"
    ):
        _datamodule(tmp_path, target="Blonde_Hair").setup("fit")


def test_unknown_partition_code_is_an_error_naming_file_and_line(tmp_path: Path) -> None:
    folder = write_tiny_celeba(tmp_path)
    path = folder / "list_eval_partition.txt"
    lines = path.read_text().splitlines(keepends=True)
    lines[2] = lines[2].split()[0] + " 3\n"
    path.write_text("".join(lines))
    with pytest.raises(ValueError, match=r"list_eval_partition.txt, line 3: unknown partition code '3'"):
        _datamodule(tmp_path).setup("fit")


def test_missing_csv_column_is_an_error(tmp_path: Path) -> None:
    folder = write_tiny_celeba(tmp_path, layout="csv")
    path = folder / "list_eval_partition.csv"
    path.write_text(path.read_text().replace("image_id,partition", "image_id,split", 1))
    with pytest.raises(ValueError, match=r"list_eval_partition.csv: the header must be 'image_id,partition'"):
        _datamodule(tmp_path).setup("fit")


def test_malformed_attribute_row_is_an_error(tmp_path: Path) -> None:
    folder = write_tiny_celeba(tmp_path)
    path = folder / "list_attr_celeba.txt"
    lines = path.read_text().splitlines(keepends=True)
    lines[4] = lines[4].rsplit(" ", 3)[0] + "\n"  # drops values
    path.write_text("".join(lines))
    with pytest.raises(ValueError, match=r"list_attr_celeba.txt, line 5: expected a file name and 40 values"):
        _datamodule(tmp_path).setup("fit")


def test_missing_files_are_errors_naming_them(tmp_path: Path) -> None:
    folder = write_tiny_celeba(tmp_path)
    (folder / "img_align_celeba" / "000007.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of the 37 images.*000007.jpg"):
        _datamodule(tmp_path).setup("fit")
    (folder / "list_eval_partition.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"list_eval_partition.txt is missing"):
        _datamodule(tmp_path).setup("fit")


def test_missing_root_names_both_layouts_and_the_manual_steps(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        _datamodule(tmp_path / "nowhere").setup("fit")
    message = str(info.value)
    assert "does not exist" in message
    assert "celebA_v1.0" in message
    assert "img_align_celeba.zip" in message


def test_invalid_arguments_name_the_argument(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="target and spurious"):
        _datamodule(tmp_path, target="Male")
    with pytest.raises(ValueError, match="probe_per_group"):
        _datamodule(tmp_path, probe_per_group=0)


def _serve_release(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, corrupt_zip: bool = False) -> Path:
    """Lays out the six released files under ``served/`` and points the Google Drive fetch at them."""
    source = write_tiny_celeba(tmp_path / "source")
    served = tmp_path / "served"
    served.mkdir()
    with zipfile.ZipFile(served / "img_align_celeba.zip", "w") as zf:
        for image in sorted((source / "img_align_celeba").iterdir()):
            zf.write(image, f"img_align_celeba/{image.name}")
    for name in ("list_attr_celeba.txt", "identity_CelebA.txt", "list_bbox_celeba.txt"):
        (served / name).write_bytes((source / name).read_bytes())
    for name in ("list_landmarks_align_celeba.txt", "list_eval_partition.txt"):
        (served / name).write_bytes((source / name).read_bytes())
    files = tuple((f"id-{name}", file_md5(served / name), name) for _, _, name in celeba.CELEBA_FILES)
    if corrupt_zip:
        zip_bytes = (served / "img_align_celeba.zip").read_bytes()
        (served / "img_align_celeba.zip").write_bytes(zip_bytes[: len(zip_bytes) // 2])

    def fetch(file_id: str, dest: Path, md5: str) -> None:
        download_url((served / file_id.removeprefix("id-")).as_uri(), dest, md5)

    monkeypatch.setattr(celeba, "CELEBA_FILES", files)
    monkeypatch.setattr(celeba, "fetch_google_drive", fetch)
    monkeypatch.setattr(CelebADataModule, "split_sizes", SIZES)
    monkeypatch.setattr(CelebADataModule, "num_images", sum(SIZES))
    return served


def test_download_verifies_md5_and_count_then_moves_into_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _serve_release(tmp_path, monkeypatch)
    root = tmp_path / "data"
    dm = _datamodule(root, download=True)
    dm.prepare_data()
    dm.setup("fit")
    assert [p.name for p in root.iterdir()] == ["celeba"]
    assert {p.name for p in (root / "celeba").iterdir()} == {name for _, _, name in celeba.CELEBA_FILES} | {
        "img_align_celeba"
    }
    assert dm.train_group_counts().tolist() == list(TINY_CELEBA_COUNTS[0])


def test_corrupted_download_is_a_clear_error_and_leaves_nothing_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _serve_release(tmp_path, monkeypatch, corrupt_zip=True)
    root = tmp_path / "data"
    with pytest.raises(DownloadError, match=r"(?s)Checksum mismatch.*img_align_celeba.zip.*Google Drive often refuses"):
        _datamodule(root, download=True).prepare_data()
    assert not (root / "celeba").exists()
    staged = root / ".celeba.download"
    assert "img_align_celeba.zip" not in {p.name for p in staged.iterdir()}  # only files that passed their md5
    assert not [p for p in staged.iterdir() if p.name.startswith(".")]  # no partial transfer left


def test_rate_limited_source_gives_manual_steps_and_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets.utils

    def quota_exceeded(*args, **kwargs):
        raise RuntimeError("Too many users have viewed or downloaded this file recently")

    monkeypatch.setattr(torchvision.datasets.utils, "download_file_from_google_drive", quota_exceeded)
    with pytest.raises(DownloadError) as info:
        _datamodule(tmp_path / "data", download=True).prepare_data()
    message = str(info.value)
    assert "Too many users" in message
    assert "drive.google.com/uc?id=" in message
    assert "mmlab.ie.cuhk.edu.hk" in message
    assert "img_align_celeba/000001.jpg" in message
    assert not (tmp_path / "data" / "celeba").exists()
