"""Safe acquisition of dataset files: download to a temporary name, verify, then move into place.

Every dataset suite in this field ships downloaders that can leave a half-written file or a half-extracted
folder behind that later looks complete. Everything here writes into a temporary sibling of its target first
and only renames it into place (``os.replace``, atomic on one file system) once it is whole and verified, so a
failure at any point leaves either nothing or the previous state.

Archive extraction refuses members that would land outside the target folder (absolute paths, ``..``, links
pointing outside, device files), the "tar slip" / "zip slip" attacks, judged on the paths the members have once
the archive's top folder is stripped. A process killed mid-transfer cannot clean up after itself: its temporary
names carry the host and process id, and the next try removes those of processes that are gone. What ends up in
place has the permissions the umask gives (``tempfile`` alone would leave 0600 files and 0700 folders).
"""

from __future__ import annotations

import hashlib
import lzma
import os
import posixpath
import shutil
import socket
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

_CHUNK = 1 << 20  # 1 MiB read/write chunks: constant memory for multi-GB archives
_STALE_AFTER_S = 24 * 3600  # another host's temporaries: their process cannot be asked, so they expire


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


def _umask() -> int:
    try:  # Linux >= 4.7 reports it without changing it
        with open("/proc/self/status") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0o022)  # elsewhere the only way to read it is to set it (briefly, process-wide)
        os.umask(mask)
        return mask


def _owner_tag() -> str:
    """``<host>-<pid>``: lets a later try tell a dead process's temporaries from a live one's."""
    host = socket.gethostname().replace(".", "_").replace("-", "_") or "host"
    return f"{host}-{os.getpid()}"


def _process_gone(tag: str) -> bool:
    host, _, pid = tag.rpartition("-")
    if host != _owner_tag().rpartition("-")[0] or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by another user
        return False
    return False


def remove_stale_temporaries(folder: Path, name: str, suffix: str) -> list[Path]:
    """Removes what an interrupted transfer into ``folder / name`` left behind: ``.<name>.<tag>.*<suffix>`` entries.

    A temporary is stale when the process that made it (its host and pid are in ``tag``) is gone, or, for another
    host's or one without a tag (older versions), when it is older than a day. Live transfers are left alone.

    Returns:
        The paths removed.
    """
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    prefix = f".{name}."
    for entry in folder.iterdir():
        if not (entry.name.startswith(prefix) and entry.name.endswith(suffix)):
            continue
        tag = entry.name[len(prefix) :].split(".", 1)[0]
        try:
            old = time.time() - entry.lstat().st_mtime > _STALE_AFTER_S
        except FileNotFoundError:
            continue
        if _process_gone(tag) or old:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def _make_folders(folder: Path) -> list[Path]:
    """Creates ``folder`` and its missing parents; returns the ones it created, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        path.mkdir(exist_ok=True)
    return missing


def _remove_if_empty(folders: list[Path]) -> None:
    """Undoes :func:`_make_folders` after a failure, sparing any folder something else has filled meanwhile."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def temporary_folder(parent: Path, name: str, suffix: str) -> Path:
    """A new hidden folder ``parent/.<name>.<host>-<pid>.<random><suffix>``, first removing dead processes' ones.

    It gets the permissions the umask gives (``tempfile.mkdtemp`` alone makes 0700), since it may be renamed into
    place as it is.
    """
    parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(parent, name, suffix)
    folder = Path(tempfile.mkdtemp(prefix=f".{name}.{_owner_tag()}.", suffix=suffix, dir=parent))
    os.chmod(folder, 0o777 & ~_umask())
    return folder


def require_writable(folder: Path, argument: str = "root", purpose: str = "download=True cannot save the data") -> None:
    """Raises a :class:`PermissionError` naming ``folder`` when files cannot be created in it (or where it will be).

    Args:
        folder: where a download will write; it need not exist yet (its nearest existing parent is checked).
        argument: the datamodule argument that set it, for the message.
        purpose: what cannot be done there, for the message.
    """
    existing = Path(folder)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(
            f"{argument}={str(folder)!r}: {existing} is a file, not a folder; point {argument} at a folder."
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(
            f"{argument}={str(folder)!r} is read-only ({existing} is not writable), so {purpose} there. "
            f"Make it writable (chmod u+w {existing}), or download into a writable folder and pass that "
            f"as {argument}, or put the data there by hand and pass download=False."
        )


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
    created = _make_folders(dest.parent)
    remove_stale_temporaries(dest.parent, dest.name, ".part")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.{_owner_tag()}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600 whatever the umask
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
        _remove_if_empty(created)
        raise
    return dest


def _inside(root: str, path: str) -> bool:
    """Whether the normalised ``path`` (relative to ``root`` unless absolute) stays inside ``root``."""
    full = os.path.normpath(os.path.join(root, path))
    return os.path.commonpath([root, full]) == root


def _parts(name: str) -> list[str]:
    return [p for p in name.split("/") if p not in ("", ".")]


def _top_folder(archive: Path, names: list[str]) -> str:
    """The single top-level folder every member of the archive lies in (``strip_top_folder``)."""
    tops = sorted({_parts(n)[0] for n in names if _parts(n)})
    if len(tops) != 1:
        raise ValueError(f"Archive {archive} should hold a single top-level folder, found {tops}.")
    return tops[0]


def _check_tar_member(member: tarfile.TarInfo, root: str, links: set[str], top: str | None) -> None:
    """Refuses a member whose path or link target leaves ``root``, judged on its path after ``top`` is stripped."""
    name = member.name
    parts = _parts(name)
    if os.path.isabs(name) or posixpath.isabs(name) or ".." in parts or not _inside(root, name):
        raise ValueError(f"Refusing to extract archive member {name!r}: its path leaves the target folder.")
    final = parts[1:] if top is not None else parts  # where the member ends up once the top folder is stripped
    if top is not None and not final and not member.isdir():
        raise ValueError(f"Refusing to extract archive member {name!r}: the top folder must be a plain folder.")
    # a path through an earlier link member could resolve anywhere ("d" -> ".", then "d/x"): refuse it
    skipped = len(parts) - len(final)  # 1 when the top folder is stripped
    through = next(("/".join(parts[:i]) for i in range(1, len(parts)) if "/".join(final[: i - skipped]) in links), None)
    if through is not None:
        raise ValueError(f"Refusing to extract archive member {name!r}: its path goes through the link {through!r}.")
    if member.issym() or member.islnk():
        links.add("/".join(final))
    if member.issym():
        # a symlink's target is relative to the folder holding the link, in the stripped layout
        link = member.linkname
        if posixpath.isabs(link) or not _inside(root, posixpath.join("/".join(final[:-1]), link)):
            raise ValueError(
                f"Refusing to extract archive member {name!r}: it links to {link!r}, outside the target folder"
                f"{' once its top folder is stripped' if top is not None else ''}."
            )
    elif member.islnk():
        # a hard link's target is relative to the archive root, and must survive the stripping too
        target = _parts(member.linkname)
        if (
            posixpath.isabs(member.linkname)
            or ".." in target
            or not _inside(root, member.linkname)
            or (top is not None and (len(target) < 2 or target[0] != top))
        ):
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


def _check_extracted_links(content: Path, archive: Path) -> None:
    """Second line of defence: every symlink in the final layout resolves inside ``content``."""
    root = os.path.realpath(content)
    for dirpath, dirnames, filenames in os.walk(content):
        for entry in dirnames + filenames:
            path = os.path.join(dirpath, entry)
            if os.path.islink(path) and not _inside(root, os.path.realpath(path)):
                member = os.path.relpath(path, content)
                raise ValueError(
                    f"Refusing to extract archive {archive}: its member {member!r} links to "
                    f"{os.readlink(path)!r}, outside the target folder."
                )


def _extract_into(archive: Path, folder: Path, strip_top_folder: bool) -> Path:
    """Checks every member, extracts them into ``folder`` and returns the folder that becomes the destination."""
    root = os.path.realpath(folder)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            for info in infos:
                _check_zip_member(info, root)
            top = _top_folder(archive, [i.filename for i in infos]) if strip_top_folder else None
            zf.extractall(folder)  # raises BadZipFile on a CRC mismatch; zip has no links
    else:
        try:
            tf = tarfile.open(archive)  # noqa: SIM115 (closed by `with tf` below); plain, gzip, bz2 or xz
        except tarfile.ReadError as e:
            raise tarfile.ReadError(f"not a zip or tar archive ({e})") from e
        with tf:
            members = tf.getmembers()  # reads the whole archive: a truncated one fails here, before extraction
            top = _top_folder(archive, [m.name for m in members]) if strip_top_folder else None
            links: set[str] = set()
            for member in members:
                _check_tar_member(member, root, links, top)
            if not hasattr(tarfile, "data_filter"):  # pragma: no cover - Python < 3.11.4; members were checked above
                tf.extractall(folder, members=members)
            else:
                try:
                    tf.extractall(folder, members=members, filter="data")  # another line of defence
                except tarfile.FilterError as e:
                    raise ValueError(f"Refusing to extract archive member {e.tarinfo.name!r}: {e}") from e
    content = folder / top if top is not None else folder
    if top is not None and (content.is_symlink() or not content.is_dir()):
        raise ValueError(f"Archive {archive} should hold a single top-level folder, but {top!r} is not a folder.")
    _check_extracted_links(content, archive)
    return content


def extract_archive(
    archive: Path,
    dest: Path,
    *,
    strip_top_folder: bool = False,
    verify: Callable[[Path], None] | None = None,
) -> Path:
    """Extracts a zip, tar or compressed tar archive into ``dest``, atomically and safely.

    Members are extracted into a temporary sibling folder of ``dest``; every member is checked first and any
    whose path, or link target (symbolic or hard), would land outside that folder is refused, judged on the paths
    the members have once ``strip_top_folder`` has removed the top folder; after extraction every symlink is
    resolved again in that final layout. The result is checked by ``verify`` (if given) and only then renamed to
    ``dest``. On any failure the temporary folder is removed, so nothing half-extracted is left behind; one left
    by a process that was killed is removed by the next call. New folders get the permissions the umask gives.

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
        FileNotFoundError: ``archive`` does not exist.
        FileExistsError: an entry of the archive already exists in a non-empty ``dest``.
    """
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise FileNotFoundError(f"Archive {archive} does not exist (or is not a file): download it first.")
    created = _make_folders(dest.parent)
    tmp = temporary_folder(dest.parent, dest.name, ".extracting")  # may become dest as it is
    moved = False
    try:
        try:
            content = _extract_into(archive, tmp, strip_top_folder)
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError, OSError) as e:
            if isinstance(e, OSError) and e.errno is not None:
                raise  # a real file-system error (disk full, permissions), not a bad archive
            raise DownloadError(
                f"Archive {archive} is corrupt, truncated or not a zip/tar file ({type(e).__name__}: {e}). "
                f"Delete it and download it again."
            ) from e
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
        moved = True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if not moved:
            _remove_if_empty(created)
    return dest
