"""The backup catalog: table `dagpg.backups` in the instance's own database.

The folders and their manifests are the truth; the catalog is what other commands ask without
reading the disk (`dagpg verify` asks for the newest backup) and where verification results are
kept. Backup, verify, prune and restore keep it in step with the folders.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg2.errors
from psycopg2 import sql

from dagpg import pg
from dagpg.dbtables import has_table
from dagpg.instance import Instance

log = logging.getLogger(__name__)

TABLE = "dagpg.backups"
_TABLE = sql.Identifier("dagpg", "backups")
_COLUMNS = ("name", "path", "kind", "status", "started_at", "finished_at", "size_bytes",
            "dump_sha256", "verified_at", "verify_status", "verify_detail",
            "restore_tested_at", "error")


@dataclass(frozen=True)
class BackupInfo:
    """One catalog row. Times are timezone-aware UTC."""

    name: str
    path: Path
    kind: str
    status: str  # ok | failed
    started_at: datetime
    finished_at: datetime | None
    size_bytes: int | None
    dump_sha256: str | None
    verified_at: datetime | None
    verify_status: str | None  # ok | failed | None (never checked after creation)
    verify_detail: str | None
    restore_tested_at: datetime | None
    error: str | None

    @property
    def verified(self) -> bool:
        """True when the backup's latest verification passed (every backup is checked once,
        before its folder gets its final name; `dagpg backups verify` checks again)."""
        return self.status == "ok" and self.verify_status == "ok"

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "path": str(self.path), "kind": self.kind, "status": self.status,
            "started_at": _iso(self.started_at), "finished_at": _iso(self.finished_at),
            "size_bytes": self.size_bytes, "dump_sha256": self.dump_sha256,
            "verified": self.verified, "verified_at": _iso(self.verified_at),
            "verify_status": self.verify_status, "verify_detail": self.verify_detail,
            "restore_tested_at": _iso(self.restore_tested_at), "error": self.error,
        }


def latest_backup(instance: Instance) -> BackupInfo | None:
    """The newest backup that completed (status ok), by finish time; None when there is none
    or the kit's schema is missing. Raises DatabaseError when PostgreSQL cannot be reached."""
    rows = _select(instance, "WHERE status = 'ok' ORDER BY finished_at DESC, name DESC LIMIT 1")
    return rows[0] if rows else None


def all_backups(instance: Instance) -> list[BackupInfo]:
    """Every catalog row, oldest first."""
    return _select(instance, "ORDER BY started_at, name")


def record(conn, manifest: dict[str, Any], path: Path, *, status: str = "ok",
           error: str | None = None) -> None:
    """Insert or replace the row of the backup `manifest` describes (a psycopg2 connection)."""
    files = manifest.get("files") or {}
    verified = manifest.get("verified") or {}
    row = {
        "name": manifest["name"],
        "path": str(path),
        "kind": manifest.get("kind") or "manual",
        "status": status,
        "started_at": manifest["started_at"],
        "finished_at": manifest.get("finished_at"),
        "size_bytes": sum(int(f["size"]) for f in files.values()) if files else None,
        "dump_sha256": (files.get(manifest.get("dump_file", "")) or {}).get("sha256"),
        "verified_at": verified.get("at"),
        "verify_status": "ok" if verified.get("at") and status == "ok" else None,
        "verify_detail": None,
        "restore_tested_at": None,
        "error": error,
    }
    _upsert(conn, row, manifest)


def put(conn, info: BackupInfo, manifest: dict[str, Any] | None) -> None:
    """Insert or replace a row as it is (e.g. rows read before a restore replaced the table)."""
    row = {c: getattr(info, c) for c in _COLUMNS}
    row["path"] = str(info.path)
    _upsert(conn, row, manifest)


def _upsert(conn, row: dict[str, Any], manifest: dict[str, Any] | None) -> None:
    columns = [*row, "manifest"]
    with conn.cursor() as cur:
        cur.execute(
            sql.SQL("INSERT INTO {} ({}) VALUES ({}) ON CONFLICT (name) DO UPDATE SET {}").format(
                _TABLE,
                sql.SQL(", ").join(map(sql.Identifier, columns)),
                sql.SQL(", ").join(sql.Placeholder() * len(columns)),
                sql.SQL(", ").join(
                    sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c))
                    for c in columns if c != "name"),
            ),
            (*row.values(), json.dumps(manifest) if manifest is not None else None),
        )


def record_verification(conn, name: str, ok: bool, detail: str, *, restore_tested: bool) -> bool:
    """Store a verification result. False when the catalog has no row named `name`."""
    with conn.cursor() as cur:
        cur.execute(
            sql.SQL(
                "UPDATE {} SET verified_at = now(), verify_status = %s, verify_detail = %s, "
                "restore_tested_at = CASE WHEN %s THEN now() ELSE restore_tested_at END "
                "WHERE name = %s").format(_TABLE),
            ("ok" if ok else "failed", detail, restore_tested and ok, name),
        )
        return cur.rowcount == 1


def forget(conn, names: list[str]) -> None:
    """Delete the rows of backups whose folders were deleted."""
    if names:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("DELETE FROM {} WHERE name = ANY(%s)").format(_TABLE), (names,))


def rows_by_name(conn) -> dict[str, BackupInfo]:
    """Every row keyed by name; empty when the kit's schema is missing."""
    return {b.name: b for b in _fetch(conn, "")}


def has_catalog(conn) -> bool:
    return has_table(conn, TABLE)


def _select(instance: Instance, clause: str) -> list[BackupInfo]:
    with pg.connection(instance.target) as conn:
        return _fetch(conn, clause)


def _fetch(conn, clause: str) -> list[BackupInfo]:
    if not has_catalog(conn):
        log.info("%s does not exist (run `dagpg db upgrade`); no backups catalogued", TABLE)
        return []
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("SELECT {} FROM {} ").format(
                sql.SQL(", ").join(map(sql.Identifier, _COLUMNS)), _TABLE) + sql.SQL(clause))
            rows = cur.fetchall()
    except psycopg2.errors.UndefinedColumn:
        conn.rollback()
        log.warning("%s is not at the kit's head revision; run `dagpg db upgrade`", TABLE)
        return []
    return [_info(dict(zip(_COLUMNS, row, strict=True))) for row in rows]


def _info(row: dict[str, Any]) -> BackupInfo:
    for key in ("started_at", "finished_at", "verified_at", "restore_tested_at"):
        row[key] = _utc(row[key])
    row["path"] = Path(row["path"])
    return BackupInfo(**row)


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
