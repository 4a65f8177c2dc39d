"""A backup folder's layout and its manifest.json: what is in it, checksums, versions, row counts."""

from __future__ import annotations

import hashlib
import json
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from psycopg2 import sql

from dagpg.backup.errors import BackupCorruptError

FORMAT = 1
MANIFEST = "manifest.json"
DUMP_FILE = "dagster.dump"
LOGS_FILE = "compute_logs.tar.gz"
CONFIG_FILES = ("dagster.yaml", "workspace.yaml")
PARTIAL_PREFIX = ".partial-"
DELETING_PREFIX = ".deleting-"

# 20261124T013000Z, optionally -<suffix> (20261124T013000Z-pre-restore, ...-2): sorts by time.
NAME_RE = re.compile(r"^(?P<stamp>\d{8}T\d{6}Z)(?:-[a-z0-9-]+)?$")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")
_CHUNK = 1 << 20


def new_name(started_at: datetime, suffix: str | None = None) -> str:
    stamp = started_at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{suffix}" if suffix else stamp


def stamp_of(name: str) -> datetime | None:
    """The UTC time in a backup's name, or None when `name` is not a backup's name."""
    match = NAME_RE.match(name)
    if not match:
        return None
    return datetime.strptime(match["stamp"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def sha256_file(path: Path) -> tuple[int, str]:
    """(size, SHA-256 hex) of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def describe_files(folder: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    files = {}
    for name in names:
        size, digest = sha256_file(folder / name)
        files[name] = {"size": size, "sha256": digest}
    return files


def check_files(folder: Path, manifest: dict[str, Any]) -> list[str]:
    """Problems with the files the manifest lists (missing, size or SHA-256 differs)."""
    problems = []
    for name, expected in (manifest.get("files") or {}).items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{name} is missing")
            continue
        size, digest = sha256_file(path)
        if size != expected.get("size"):
            problems.append(f"{name} is {size} bytes, the manifest says {expected.get('size')}")
        elif digest != expected.get("sha256"):
            problems.append(f"{name}: SHA-256 differs from the manifest (the file changed)")
    return problems


def write_manifest(folder: Path, manifest: dict[str, Any]) -> Path:
    path = folder / MANIFEST
    data = json.dumps(manifest, indent=2, sort_keys=False, default=str) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return path


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of a backup folder; BackupCorruptError when missing or unreadable."""
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BackupCorruptError(folder.name, f"{MANIFEST} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BackupCorruptError(folder.name, f"{MANIFEST} cannot be read ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupCorruptError(folder.name, f"{MANIFEST} is not a dagpg backup manifest "
                                              f"(format {FORMAT})")
    for table in manifest.get("row_counts") or {}:
        if not all(_IDENT.match(part) for part in split_table(table)):
            raise BackupCorruptError(folder.name, f"{MANIFEST} names a strange table {table!r}")
    if DUMP_FILE not in (manifest.get("files") or {}):
        raise BackupCorruptError(folder.name, f"{MANIFEST} lists no {DUMP_FILE}")
    return manifest


def split_table(key: str) -> tuple[str, str]:
    """'runs' -> ('public', 'runs'); 'dagpg.backups' -> ('dagpg', 'backups')."""
    schema, _, table = key.rpartition(".")
    return (schema or "public", table)


def table_key(schema: str, table: str) -> str:
    return table if schema == "public" else f"{schema}.{table}"


def row_counts(cur) -> dict[str, int]:
    """Exact row counts of every table outside PostgreSQL's own schemas (one cursor, one
    snapshot: the counts describe exactly what pg_dump saw when it shares the snapshot)."""
    cur.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition "
        "AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
        "AND n.nspname NOT LIKE 'pg\\_%%' ORDER BY 1, 2"
    )
    tables = cur.fetchall()
    counts = {}
    for schema, table in tables:
        cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table)))
        counts[table_key(schema, table)] = cur.fetchone()[0]
    return counts


def now_utc() -> datetime:
    return datetime.now(UTC)


def iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
