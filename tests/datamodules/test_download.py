"""Tests of the download and extraction helpers: atomic writes, checksums, corrupt and malicious archives."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from lightning_sam.datamodules._download import DownloadError, download_url, extract_archive, file_md5


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _tar_gz(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def test_download_url_copies_file_url_and_checks_md5(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(b"payload" * 1000)
    out = tmp_path / "out" / "copy.bin"
    assert download_url(src.as_uri(), out, md5=file_md5(src)) == out
    assert out.read_bytes() == src.read_bytes()
    assert _leftovers(out.parent) == []


def test_download_url_checksum_mismatch_leaves_nothing(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(b"corrupted")
    out_dir = tmp_path / "out"
    with pytest.raises(DownloadError, match=r"Checksum mismatch.*src.bin.*To fix"):
        download_url(src.as_uri(), out_dir / "copy.bin", md5="0" * 32)
    assert not out_dir.exists()  # nor the folder it created for the file


def test_download_url_unreachable_source_names_url_and_manual_steps(tmp_path: Path) -> None:
    url = (tmp_path / "missing.tar.gz").as_uri()
    with pytest.raises(DownloadError) as info:
        download_url(url, tmp_path / "out" / "x.tar.gz", instructions="fetch it from the mirror into data/")
    assert url in str(info.value)
    assert "fetch it from the mirror into data/" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_extract_archive_strips_single_top_folder(tmp_path: Path) -> None:
    archive = _tar_gz(tmp_path / "a.tar.gz", {"top/metadata.csv": b"x", "top/sub/img.jpg": b"y"})
    dest = extract_archive(archive, tmp_path / "data" / "top", strip_top_folder=True)
    assert (dest / "metadata.csv").read_bytes() == b"x"
    assert (dest / "sub" / "img.jpg").read_bytes() == b"y"
    assert _leftovers(tmp_path / "data") == []


def test_extract_archive_zip_merges_into_existing_folder(tmp_path: Path) -> None:
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("img_align_celeba/000001.jpg", b"jpg")
    dest = tmp_path / "celeba"
    dest.mkdir()
    (dest / "list_attr_celeba.txt").write_text("1\n")
    extract_archive(archive, dest)
    assert sorted(p.name for p in dest.iterdir()) == ["img_align_celeba", "list_attr_celeba.txt"]
    assert (dest / "img_align_celeba" / "000001.jpg").read_bytes() == b"jpg"


def test_extract_archive_refuses_parent_traversal_member(tmp_path: Path) -> None:
    archive = _tar_gz(tmp_path / "evil.tar.gz", {"top/ok.txt": b"ok", "../evil": b"pwned"})
    (tmp_path / "data").mkdir()
    with pytest.raises(ValueError, match=r"'\.\./evil'"):
        extract_archive(archive, tmp_path / "data" / "top")
    assert not (tmp_path / "evil").exists()
    assert not (tmp_path / "data" / "evil").exists()
    assert list((tmp_path / "data").iterdir()) == []


def test_extract_archive_refuses_absolute_member_and_outside_symlink(tmp_path: Path) -> None:
    absolute = _tar_gz(tmp_path / "abs.tar.gz", {"/tmp/evil": b"x"})
    with pytest.raises(ValueError, match="/tmp/evil"):
        extract_archive(absolute, tmp_path / "d1")
    link = tmp_path / "link.tar"
    with tarfile.open(link, "w") as tf:
        info = tarfile.TarInfo("top/escape")
        info.type, info.linkname = tarfile.SYMTYPE, "../../outside"
        tf.addfile(info)
    with pytest.raises(ValueError, match="top/escape"):
        extract_archive(link, tmp_path / "d2")
    assert not (tmp_path / "d1").exists()
    assert not (tmp_path / "d2").exists()
    assert _leftovers(tmp_path) == []


def test_extract_archive_refuses_zip_slip(tmp_path: Path) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../../evil.txt", b"pwned")
    with pytest.raises(ValueError, match=r"evil.txt"):
        extract_archive(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert _leftovers(tmp_path) == []


def test_extract_archive_truncated_archive_is_clear_error_and_leaves_nothing(tmp_path: Path) -> None:
    good = _tar_gz(tmp_path / "good.tar.gz", {f"top/{i}.bin": bytes(range(256)) * 64 for i in range(20)})
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (tmp_path / "data").mkdir()
    with pytest.raises(DownloadError, match=r"corrupt, truncated.*download it again"):
        extract_archive(bad, tmp_path / "data" / "top", strip_top_folder=True)
    assert list((tmp_path / "data").iterdir()) == []


def test_extract_archive_rejected_by_verify_leaves_nothing(tmp_path: Path) -> None:
    archive = _tar_gz(tmp_path / "a.tar.gz", {"top/a.txt": b"a"})

    def reject(folder: Path) -> None:
        raise DownloadError(f"{folder.name} failed verification")

    (tmp_path / "data").mkdir()
    with pytest.raises(DownloadError, match="failed verification"):
        extract_archive(archive, tmp_path / "data" / "top", strip_top_folder=True, verify=reject)
    assert list((tmp_path / "data").iterdir()) == []


def test_extract_archive_refuses_member_through_a_symlink(tmp_path: Path) -> None:
    archive = tmp_path / "chain.tar"
    with tarfile.open(archive, "w") as tf:
        for name in ("a/b", "a/b/c"):  # each link lexically stays inside; chained they reach the parent
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, ".."
            tf.addfile(info)
        data = tarfile.TarInfo("a/b/c/evil")
        data.size = 5
        tf.addfile(data, io.BytesIO(b"pwned"))
    (tmp_path / "data").mkdir()
    with pytest.raises(ValueError, match=r"'a/b/c'.*through the link 'a/b'"):
        extract_archive(archive, tmp_path / "data" / "out")
    assert not (tmp_path / "evil").exists()
    assert list((tmp_path / "data").iterdir()) == []


def test_extract_archive_refuses_a_link_that_escapes_once_the_top_folder_is_stripped(tmp_path: Path) -> None:
    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w") as tf:
        data = tarfile.TarInfo("top/a.txt")
        data.size = 1
        tf.addfile(data, io.BytesIO(b"a"))
        link = tarfile.TarInfo("top/y")  # inside top/ while top/ exists; dest/.. once top/ is stripped
        link.type, link.linkname = tarfile.SYMTYPE, ".."
        tf.addfile(link)
    with pytest.raises(ValueError, match=r"'top/y'.*'\.\.'.*once its top folder is stripped"):
        extract_archive(archive, tmp_path / "data" / "top", strip_top_folder=True)
    assert not (tmp_path / "data").exists()
    # without stripping the same link stays inside the target folder
    dest = extract_archive(archive, tmp_path / "kept")
    assert (dest / "top" / "y").resolve() == dest.resolve()


def test_extract_archive_removes_a_dead_process_extracting_folder_and_spares_a_live_one(tmp_path: Path) -> None:
    import subprocess
    import sys

    from lightning_sam.datamodules._download import _owner_tag

    host = _owner_tag().rpartition("-")[0]
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = tmp_path / f".top.{host}-{gone.stdout.strip()}.abc123.extracting"  # a kill -9 mid-extraction
    (dead / "top").mkdir(parents=True)
    (dead / "top" / "half.bin").write_bytes(b"x")
    live = tmp_path / f".top.{_owner_tag()}.def456.extracting"  # another extraction in progress
    live.mkdir()
    archive = _tar_gz(tmp_path / "a.tar.gz", {"top/a.txt": b"a"})
    extract_archive(archive, tmp_path / "top", strip_top_folder=True)
    assert not dead.exists()
    assert live.exists()
    assert (tmp_path / "top" / "a.txt").read_bytes() == b"a"


@pytest.mark.parametrize("umask", [0o022, 0o002], ids=["022", "002"])
def test_extracted_folder_and_downloaded_file_honour_the_umask(tmp_path: Path, umask: int) -> None:
    import os
    import stat

    archive = _tar_gz(tmp_path / "a.tar.gz", {"a.txt": b"a"})
    old = os.umask(umask)
    try:
        dest = extract_archive(archive, tmp_path / "data")
        copy = download_url(archive.as_uri(), tmp_path / "downloads" / "a.tar.gz")
    finally:
        os.umask(old)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE(copy.stat().st_mode) == 0o666 & ~umask
