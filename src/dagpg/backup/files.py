"""Files of a backup folder: private permissions, durable writes, the compute-logs archive."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tarfile
from pathlib import Path

log = logging.getLogger(__name__)

LOGS_ARCNAME = "compute_logs"


def private_dir(path: Path) -> Path:
    """Create `path` (and parents) readable by its owner only; an existing one keeps its mode."""
    if not path.is_dir():
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, 0o700)
    return path


def make_private(path: Path) -> None:
    """0600 for files, 0700 for folders (on Windows, NTFS inherits the folder's ACL instead)."""
    if sys.platform != "win32":
        os.chmod(path, 0o700 if path.is_dir() else 0o600)


def fsync_path(path: Path) -> None:
    """Flush a file, or a folder's entries, to disk (folders only where the OS allows it)."""
    if path.is_dir() and sys.platform == "win32":
        return
    # Windows flushes only handles open for writing (FlushFileBuffers).
    fd = os.open(path, os.O_RDWR if sys.platform == "win32" else os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_private(source: Path, target: Path) -> None:
    with source.open("rb") as src:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
            dst.flush()
            os.fsync(dst.fileno())


def archive_logs(source: Path, target: Path, *, exclude: Path | None = None) -> dict[str, int]:
    """tar.gz of the compute logs folder `source` (files that vanish meanwhile are skipped).

    Returns {"files": n, "bytes": total} of what went in. A missing folder gives an empty
    archive, so every backup has one and a restore knows what the logs were.
    """
    files = total = 0
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as raw:
        with tarfile.open(fileobj=raw, mode="w:gz", compresslevel=6) as tar:
            if source.is_dir():
                for root, dirs, names in os.walk(source):
                    here = Path(root)
                    if exclude is not None:
                        dirs[:] = [d for d in dirs if not _same(here / d, exclude)]
                    dirs.sort()
                    for name in sorted(names):
                        path = here / name
                        try:
                            tar.add(path, arcname=_arcname(source, path), recursive=False)
                        except FileNotFoundError:
                            log.info("%s vanished while archiving; skipped", path)
                            continue
                        files += 1
                        total += path.stat().st_size if path.exists() else 0
        raw.flush()
        os.fsync(raw.fileno())
    return {"files": files, "bytes": total}


def check_archive(path: Path) -> int:
    """Read the whole archive (gzip's CRC checks every byte); the number of members.
    ValueError when an entry could write outside the compute logs folder (see _check_entry)."""
    with tarfile.open(path, mode="r:gz") as tar:
        count = 0
        for member in tar:
            _check_entry(path, member)
            if member.isfile():
                extracted = tar.extractfile(member)
                while extracted is not None and extracted.read(1 << 20):
                    pass
            count += 1
    return count


def extract_logs(archive: Path, target: Path) -> None:
    """Unpack an archive made by archive_logs into the new folder `target` (safely: see
    _check_entry)."""
    target.mkdir(parents=True)
    with tarfile.open(archive, mode="r:gz") as tar:
        members = tar.getmembers()
        for member in members:
            _check_entry(archive, member)
        members = [m for m in members if m.name != LOGS_ARCNAME]
        for member in members:
            member.name = member.name[len(LOGS_ARCNAME) + 1:]
        if hasattr(tarfile, "data_filter"):  # Python 3.11.4+
            tar.extractall(target, members=members, filter="data")
        else:
            tar.extractall(target, members=members)  # noqa: S202  (members checked above)


def remove_tree(path: Path) -> None:
    """Delete a folder so that, if interrupted, what is left never looks like a backup: it is
    first renamed to a hidden `.deleting-` name."""
    if not path.exists():
        return
    doomed = path.with_name(f".deleting-{path.name}")
    if path.name.startswith((".deleting-", ".partial-")):
        doomed = path
    else:
        os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)
    if doomed.exists():
        shutil.rmtree(doomed)


def _check_entry(archive: Path, member: tarfile.TarInfo) -> None:
    """archive_logs writes only files and folders under compute_logs/: anything else (a link,
    a device, an absolute path, `..`) could write outside the folder it is unpacked into."""
    parts = member.name.replace("\\", "/").split("/")
    inside = parts[0] == LOGS_ARCNAME and all(p not in ("", ".", "..") for p in parts[1:])
    if not (member.isfile() or member.isdir()) or not inside:
        raise ValueError(f"{archive.name} holds an unsafe entry {member.name!r}")


def _arcname(source: Path, path: Path) -> str:
    return f"{LOGS_ARCNAME}/{path.relative_to(source).as_posix()}"


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False
