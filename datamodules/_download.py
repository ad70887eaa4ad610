"""Safe acquisition of dataset files: download to a temporary name, verify, then move into place.

Every dataset suite in this field ships downloaders that can leave a half-written file or a half-extracted
folder behind that later looks complete. Everything here writes into a temporary sibling of its target first
and only renames it into place (``os.replace``, atomic on one file system) once it is whole and verified, so a
failure at any point leaves either nothing or the previous state.

Archive extraction refuses members that would land outside the target folder (absolute paths, ``..``, links
pointing outside, device files), the "tar slip" / "zip slip" attacks.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import posixpath
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

_CHUNK = 1 << 20  # 1 MiB read/write chunks: constant memory for multi-GB archives


class DownloadError(RuntimeError):
    """A file could not be fetched, was corrupt, or failed verification; the message gives the manual steps."""


def file_md5(path: Path) -> str:
    """Hex MD5 digest of a file, read in chunks.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "a.txt"
        >>> _ = p.write_bytes(b"abc")
        >>> file_md5(p)
        '900150983cd24fb0d6963f7d28e17f72'
    """
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def count_files(folder: Path, suffixes: tuple[str, ...] | None = None) -> int:
    """Number of regular files below ``folder`` (recursively), optionally only those with one of ``suffixes``.

    Hidden files and folders (names starting with ``.``) are skipped, as are our own temporary folders.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> for name in ("a.jpg", "b.JPG", "c.txt", ".hidden.jpg"):
        ...     _ = (d / name).write_bytes(b"")
        >>> count_files(d), count_files(d, suffixes=(".jpg",))
        (3, 2)
    """
    wanted = None if suffixes is None else tuple(s.lower() for s in suffixes)
    total = 0
    for _dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith("."):
                continue
            if wanted is None or name.lower().endswith(wanted):
                total += 1
    return total


def _manual_steps(url: str, dest: Path, instructions: str | None) -> str:
    steps = instructions or f"download {url} by hand (a browser, or `curl -L -o {dest.name} '{url}'`) to {dest}"
    return f"To fix: {steps}."


def download_url(url: str, dest: Path, md5: str | None = None, instructions: str | None = None) -> Path:
    """Downloads ``url`` to ``dest`` through a temporary file in ``dest``'s folder, atomically.

    The body is streamed to a temporary file next to ``dest``, its MD5 is checked when ``md5`` is given, and only
    then is it renamed to ``dest``. Any failure removes the temporary file and raises :class:`DownloadError`. A
    ``dest`` that already exists with the right checksum is not fetched again. ``file://`` URLs work (urllib),
    which is how tests serve archives.

    Args:
        url: the source (``http(s)://``, ``ftp://`` or ``file://``).
        dest: the final path of the file.
        md5: expected hex MD5 of the file; ``None`` skips the check (verify the content afterwards).
        instructions: the manual steps to put in the error message; by default "download the URL by hand to
            ``dest``".

    Returns:
        ``dest``.

    Raises:
        DownloadError: the URL could not be read, the transfer was cut short, or the checksum did not match.
    """
    dest = Path(dest)
    if dest.is_file() and md5 is not None and file_md5(dest) == md5:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=60) as response:  # URLs come from our code, not from users
                    expected = response.headers.get("Content-Length")
                    shutil.copyfileobj(response, out, _CHUNK)
            except (urllib.error.URLError, OSError, ValueError) as e:
                raise DownloadError(f"Could not download {url}: {e}. {_manual_steps(url, dest, instructions)}") from e
        size = tmp.stat().st_size
        if expected is not None and expected.isdigit() and int(expected) != size:
            raise DownloadError(
                f"Download of {url} was cut short: got {size} of {expected} bytes. "
                f"Try again, or {_manual_steps(url, dest, instructions)}"
            )
        if md5 is not None:
            actual = file_md5(tmp)
            if actual != md5:
                raise DownloadError(
                    f"Checksum mismatch for {url}: expected md5 {md5}, got {actual} (a corrupt or partial transfer, "
                    f"or an HTML error page). {_manual_steps(url, dest, instructions)}"
                )
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def _inside(root: str, path: str) -> bool:
    """Whether the normalised ``path`` (relative to ``root`` unless absolute) stays inside ``root``."""
    full = os.path.normpath(os.path.join(root, path))
    return os.path.commonpath([root, full]) == root


def _check_tar_member(member: tarfile.TarInfo, root: str, links: set[str]) -> None:
    name = member.name
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if os.path.isabs(name) or posixpath.isabs(name) or ".." in parts or not _inside(root, name):
        raise ValueError(f"Refusing to extract archive member {name!r}: its path leaves the target folder.")
    # a path through an earlier link member could resolve anywhere ("d" -> ".", then "d/x"): refuse it
    through = next(("/".join(parts[:i]) for i in range(1, len(parts)) if "/".join(parts[:i]) in links), None)
    if through is not None:
        raise ValueError(f"Refusing to extract archive member {name!r}: its path goes through the link {through!r}.")
    if member.issym() or member.islnk():
        links.add("/".join(parts))
    if member.issym():
        # a symlink's target is relative to the folder holding the link
        target = member.linkname
        link_dir = posixpath.dirname(name)
        if posixpath.isabs(target) or not _inside(root, posixpath.join(link_dir, target)):
            raise ValueError(
                f"Refusing to extract archive member {name!r}: it links to {target!r}, outside the target folder."
            )
    elif member.islnk():
        # a hard link's target is relative to the archive root
        if posixpath.isabs(member.linkname) or not _inside(root, member.linkname):
            raise ValueError(
                f"Refusing to extract archive member {name!r}: it links to {member.linkname!r}, "
                "outside the target folder."
            )
    elif not (member.isfile() or member.isdir()):
        raise ValueError(f"Refusing to extract archive member {name!r}: it is a device, FIFO or other special file.")


def _check_zip_member(info: zipfile.ZipInfo, root: str) -> None:
    name = info.filename
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or not _inside(root, name):
        raise ValueError(f"Refusing to extract archive member {name!r}: its path leaves the target folder.")


def _extract_into(archive: Path, folder: Path) -> None:
    root = os.path.realpath(folder)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            for info in infos:
                _check_zip_member(info, root)
            zf.extractall(folder)  # raises BadZipFile on a CRC mismatch
        return
    try:
        tf = tarfile.open(archive)  # noqa: SIM115 (closed by `with tf` below); plain, gzip, bz2 or xz
    except tarfile.ReadError as e:
        raise tarfile.ReadError(f"not a zip or tar archive ({e})") from e
    with tf:
        members = tf.getmembers()  # reads the whole archive: a truncated one fails here, before extraction
        links: set[str] = set()
        for member in members:
            _check_tar_member(member, root, links)
        if not hasattr(tarfile, "data_filter"):  # pragma: no cover - Python < 3.11.4; members were checked above
            tf.extractall(folder, members=members)
            return
        try:
            tf.extractall(folder, members=members, filter="data")  # second line of defence
        except tarfile.FilterError as e:
            raise ValueError(f"Refusing to extract archive member {e.tarinfo.name!r}: {e}") from e


def extract_archive(
    archive: Path,
    dest: Path,
    *,
    strip_top_folder: bool = False,
    verify: Callable[[Path], None] | None = None,
) -> Path:
    """Extracts a zip, tar or compressed tar archive into ``dest``, atomically and safely.

    Members are extracted into a temporary sibling folder of ``dest``; every member is checked first and any
    whose path, or link target, would land outside that folder is refused. The result is checked by ``verify``
    (if given) and only then renamed to ``dest``. On any failure the temporary folder is removed, so nothing
    half-extracted is left behind.

    If ``dest`` does not exist (or is an empty folder) it is replaced in one rename. If it is a non-empty folder,
    each top-level entry of the archive is renamed into it (each rename atomic); an entry that already exists
    there is an error.

    Args:
        archive: the archive file (zip, tar, tar.gz, tar.bz2, tar.xz; detected from the content).
        dest: the folder that receives the archive's content.
        strip_top_folder: the archive holds one top-level folder (``name/...``, as most dataset tarballs do) and
            that folder's content becomes ``dest``; anything else at the top level is an error.
        verify: called with the extracted folder before it is moved into place; raise to reject it.

    Returns:
        ``dest``.

    Raises:
        ValueError: a member would land outside the target folder (named in the message), or
            ``strip_top_folder`` was asked for an archive without a single top-level folder.
        DownloadError: the archive is corrupt, truncated or not an archive.
        FileExistsError: an entry of the archive already exists in a non-empty ``dest``.
    """
    archive, dest = Path(archive), Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".extracting", dir=dest.parent))
    try:
        try:
            _extract_into(archive, tmp)
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError, OSError) as e:
            if isinstance(e, OSError) and e.errno is not None:
                raise  # a real file-system error (disk full, permissions), not a bad archive
            raise DownloadError(
                f"Archive {archive} is corrupt, truncated or not a zip/tar file ({type(e).__name__}: {e}). "
                f"Delete it and download it again."
            ) from e
        content = tmp
        if strip_top_folder:
            entries = [p for p in tmp.iterdir()]
            if len(entries) != 1 or not entries[0].is_dir():
                raise ValueError(
                    f"Archive {archive} should hold a single top-level folder, found {sorted(p.name for p in entries)}."
                )
            content = entries[0]
        if verify is not None:
            verify(content)
        if dest.is_dir() and any(dest.iterdir()):
            for entry in sorted(content.iterdir()):
                if (dest / entry.name).exists():
                    raise FileExistsError(f"{dest / entry.name} already exists; remove it to extract {archive} again.")
            for entry in sorted(content.iterdir()):
                os.replace(entry, dest / entry.name)
        else:
            if dest.is_dir():
                dest.rmdir()
            os.replace(content, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
