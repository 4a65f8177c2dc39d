"""`dagpg backups list`: the folders on disk, with what the catalog knows about each."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from dagpg import pg
from dagpg.backup import catalog
from dagpg.backup import manifest as mf
from dagpg.backup.folders import backup_directory, scan
from dagpg.errors import DatabaseError
from dagpg.instance import Instance
from dagpg.settings import KitSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ListedBackup:
    name: str
    path: Path | None
    state: str  # ok | unreadable (folder without a valid manifest) | failed (an attempt)
    kind: str | None
    taken_at: datetime | None
    finished_at: datetime | None
    size_bytes: int | None
    verified: str  # ok | failed | unknown
    verified_at: datetime | None
    restore_tested_at: datetime | None
    detail: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "path": str(self.path) if self.path else None,
            "state": self.state, "kind": self.kind,
            "taken_at": _iso(self.taken_at), "finished_at": _iso(self.finished_at),
            "size_bytes": self.size_bytes, "verified": self.verified,
            "verified_at": _iso(self.verified_at),
            "restore_tested_at": _iso(self.restore_tested_at), "detail": self.detail,
        }


@dataclass
class BackupList:
    directory: Path
    backups: list[ListedBackup] = field(default_factory=list)
    catalog_note: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"directory": str(self.directory), "catalog_note": self.catalog_note,
                "backups": [b.as_dict() for b in self.backups]}


def list_backups(
    instance: Instance,
    settings: KitSettings,
    *,
    directory: str | os.PathLike | None = None,
) -> BackupList:
    """Backups in the folder, oldest first, plus failed attempts the catalog remembers.
    Works without the database (no password set, server down): then without verification
    results, and `catalog_note` says why. Resolve `instance` with `require_password=False`."""
    directory = backup_directory(settings, directory)
    result = BackupList(directory=directory)
    rows: dict[str, catalog.BackupInfo] = {}
    if instance.target.password_missing:
        result.catalog_note = ("the database was not consulted (no password set): "
                               "verification results are not shown")
    else:
        try:
            with pg.connection(instance.target) as conn:
                rows = catalog.rows_by_name(conn)
        except DatabaseError as exc:
            result.catalog_note = f"catalog unavailable ({exc})"
    entries = []
    for folder in scan(directory):
        row = rows.get(folder.name)
        m = folder.manifest or {}
        verified = "unknown"
        if row is not None and row.verify_status:
            verified = row.verify_status
        elif (m.get("verified") or {}).get("at"):
            verified = "ok"
        entries.append(ListedBackup(
            name=folder.name, path=folder.path,
            state="ok" if folder.manifest else "unreadable",
            kind=m.get("kind"), taken_at=folder.taken_at, finished_at=folder.finished_at,
            size_bytes=folder.size_bytes, verified=verified if folder.manifest else "failed",
            verified_at=row.verified_at if row else mf.parse_time(
                (m.get("verified") or {}).get("at")),
            restore_tested_at=row.restore_tested_at if row else None,
            detail=folder.problem or (row.verify_detail if row and verified == "failed"
                                      else None),
        ))
    on_disk = {e.name for e in entries}
    for row in rows.values():
        if row.status == "failed" and row.name not in on_disk:
            entries.append(ListedBackup(
                name=row.name, path=None, state="failed", kind=row.kind,
                taken_at=row.started_at, finished_at=row.finished_at, size_bytes=None,
                verified="unknown", verified_at=None, restore_tested_at=None, detail=row.error,
            ))
    result.backups = sorted(entries, key=lambda e: (e.taken_at.timestamp() if e.taken_at else 0,
                                                    e.name))
    return result


def _iso(value: datetime | None) -> str | None:
    return mf.iso(value) if value else None
