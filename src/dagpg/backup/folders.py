"""The backups folder: where it is, what backups it holds, finding one by name or path."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from dagpg.backup import manifest as mf
from dagpg.backup.errors import BackupCorruptError, BackupNotFoundError
from dagpg.settings import KitSettings


@dataclass(frozen=True)
class Folder:
    """A backup folder on disk. `manifest` is None when it cannot be read (`problem` says why)."""

    name: str
    path: Path
    manifest: dict[str, Any] | None
    problem: str | None = None

    @property
    def finished_at(self) -> datetime | None:
        return mf.parse_time((self.manifest or {}).get("finished_at"))

    @property
    def taken_at(self) -> datetime:
        """When the backup was taken: its manifest's start, else the time in its name."""
        return mf.parse_time((self.manifest or {}).get("started_at")) or mf.stamp_of(self.name)

    @property
    def size_bytes(self) -> int | None:
        files = (self.manifest or {}).get("files")
        return sum(int(f["size"]) for f in files.values()) if files else None


def backup_directory(settings: KitSettings, override: str | os.PathLike | None = None) -> Path:
    """`override`, else dagpg.backup.directory (relative to the project folder)."""
    if override:
        return Path(override).expanduser().absolute()
    return settings.resolve(settings.backup.directory).absolute()


def scan(directory: Path) -> list[Folder]:
    """Every backup folder in `directory` (names like 20261124T013000Z), oldest first.
    Folders being written (`.partial-*`) or deleted are not backups and are not listed."""
    if not directory.is_dir():
        return []
    found = []
    for path in sorted(directory.iterdir()):
        if path.is_dir() and mf.stamp_of(path.name):
            found.append(_folder(path))
    return found


def partials(directory: Path) -> list[Path]:
    """Leftovers of interrupted backups or deletions."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir()
                  if p.name.startswith((mf.PARTIAL_PREFIX, mf.DELETING_PREFIX)))


def locate(name: str, directory: Path) -> Folder:
    """A backup by name (in `directory`), `latest` (the newest there), or its folder's path."""
    candidate = Path(name).expanduser()
    if name == "latest":
        valid = [f for f in scan(directory) if f.manifest is not None]
        if not valid:
            raise BackupNotFoundError(name, str(directory))
        return max(valid, key=lambda f: (f.taken_at, f.name))
    if mf.stamp_of(name) and (directory / name).is_dir():
        path = directory / name
    elif (os.sep in name or "/" in name or candidate.is_dir()) and candidate.is_dir():
        path = candidate.absolute()
    else:
        raise BackupNotFoundError(name, str(directory))
    folder = _folder(path)
    if folder.manifest is None:
        raise BackupCorruptError(folder.name, folder.problem or "no manifest")
    return folder


def _folder(path: Path) -> Folder:
    try:
        return Folder(path.name, path, mf.read_manifest(path))
    except BackupCorruptError as exc:
        return Folder(path.name, path, None, exc.problem)
