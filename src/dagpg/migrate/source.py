"""Find a Dagster SQLite instance on disk and read it without ever writing to it.

Layout (Dagster 1.13, `storage: sqlite: base_dir: B`, or B = DAGSTER_HOME by default):
B/history/runs.db, B/history/runs/<run_id>.db (one per run, plus `.db` for run_id ''),
B/history/runs/index.db, B/schedules/schedules.db. Files are opened with SQLite's
`immutable=1` (no -wal/-shm files are created next to them); a file whose -wal still holds
changes is read from a private copy instead, so nothing the daemon wrote last is missed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import quote

import yaml

from dagpg.migrate.errors import (
    CorruptSourceError,
    SourceError,
    SourceNotFoundError,
    SourceNotSqliteError,
    UnreadableSourceError,
)

log = logging.getLogger(__name__)

INDEX_SHARD = "index"
RUNLESS_SHARD = ""  # history/runs/.db holds events of run_id '' (runless and freshness events)


@dataclass(frozen=True)
class SourceLayout:
    """Where each SQLite file of one instance lives."""

    given: Path
    runs_db: Path
    shards_dir: Path
    schedules_db: Path
    yaml_path: Path | None = None
    base_dir: Path | None = None

    @property
    def index_db(self) -> Path:
        return self.shards_dir / f"{INDEX_SHARD}.db"

    def shard_path(self, run_id: str) -> Path:
        return self.shards_dir / f"{run_id}.db"

    def shard_ids(self) -> list[str]:
        """Every run shard on disk (including the hidden `.db`), sorted; index.db excluded."""
        ids = []
        with os.scandir(self.shards_dir) as entries:
            for entry in entries:
                if entry.name.endswith(".db") and entry.name != f"{INDEX_SHARD}.db":
                    ids.append(entry.name[:-3])
        return sorted(ids)

    def files(self) -> list[Path]:
        return [self.runs_db, self.index_db, self.schedules_db,
                *(self.shard_path(r) for r in self.shard_ids())]

    def as_dict(self) -> dict:
        return {"source": str(self.given), "dagster_yaml": _str(self.yaml_path),
                "base_dir": _str(self.base_dir), "runs_db": str(self.runs_db),
                "shards_dir": str(self.shards_dir), "schedules_db": str(self.schedules_db)}


def discover(source: str | os.PathLike) -> SourceLayout:
    """SOURCE is an old DAGSTER_HOME (its dagster.yaml decides) or a SQLite base_dir."""
    given = Path(source).expanduser()
    if not given.exists():
        raise SourceNotFoundError(str(source), str(given))
    if not given.is_dir():
        raise SourceError(f"{source} is not a folder; pass the old DAGSTER_HOME or its "
                          "SQLite base_dir")
    given = given.resolve()
    yaml_path = given / "dagster.yaml"
    if yaml_path.is_file():
        layout = _from_yaml(given, yaml_path)
    else:
        layout = _from_base(given, given, None)
    if not layout.runs_db.is_file():
        raise SourceNotFoundError(str(source), str(layout.runs_db))
    if not layout.shards_dir.is_dir():
        raise SourceNotFoundError(str(source), str(layout.shards_dir))
    return layout


def _from_base(given: Path, base: Path, yaml_path: Path | None) -> SourceLayout:
    return SourceLayout(given=given, runs_db=base / "history" / "runs.db",
                        shards_dir=base / "history" / "runs",
                        schedules_db=base / "schedules" / "schedules.db",
                        yaml_path=yaml_path, base_dir=base)


def _from_yaml(home: Path, yaml_path: Path) -> SourceLayout:
    try:
        data = yaml.safe_load(yaml_path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise SourceError(f"{yaml_path} cannot be read ({type(exc).__name__}); fix it or pass "
                          "the SQLite base_dir itself as SOURCE") from None
    storage = data.get("storage") if isinstance(data, dict) else None
    if isinstance(storage, dict) and storage:
        kind = next(iter(storage))
        if kind != "sqlite":
            raise SourceNotSqliteError(str(yaml_path), f"storage.{kind}")
        base = _path_value(yaml_path, home, "storage.sqlite.base_dir",
                           (storage["sqlite"] or {}).get("base_dir"))
        return _from_base(home, base, yaml_path)
    legacy = {k: data.get(k) for k in ("run_storage", "event_log_storage", "schedule_storage")}
    if isinstance(data, dict) and any(legacy.values()):
        return _from_legacy(home, yaml_path, legacy)
    return _from_base(home, home, yaml_path)


def _from_legacy(home: Path, yaml_path: Path, blocks: dict) -> SourceLayout:
    expected = {"run_storage": "SqliteRunStorage", "event_log_storage": "SqliteEventLogStorage",
                "schedule_storage": "SqliteScheduleStorage"}
    dirs: dict[str, Path | None] = {}
    for key, cls in expected.items():
        block = blocks[key]
        if not block:
            dirs[key] = None
            continue
        if not isinstance(block, dict) or block.get("class") != cls:
            found = block.get("class") if isinstance(block, dict) else block
            raise SourceNotSqliteError(str(yaml_path), f"{key} {found}")
        dirs[key] = _path_value(yaml_path, home, f"{key}.config.base_dir",
                                (block.get("config") or {}).get("base_dir"))
    default = _from_base(home, home, yaml_path)
    return SourceLayout(
        given=home, yaml_path=yaml_path,
        runs_db=dirs["run_storage"] / "runs.db" if dirs["run_storage"] else default.runs_db,
        shards_dir=dirs["event_log_storage"] or default.shards_dir,
        schedules_db=(dirs["schedule_storage"] / "schedules.db" if dirs["schedule_storage"]
                      else default.schedules_db),
    )


def _path_value(yaml_path: Path, home: Path, key: str, value) -> Path:
    if isinstance(value, dict) and set(value) == {"env"}:
        resolved = os.environ.get(str(value["env"]))
        if not resolved:
            raise SourceError(f"{yaml_path}: {key} comes from environment variable "
                              f"{value['env']}, which is not set; set it or pass the base_dir "
                              "itself as SOURCE")
        value = resolved
    if not isinstance(value, str) or not value:
        raise SourceError(f"{yaml_path}: {key} is missing or not a path; fix it or pass the "
                          "base_dir itself as SOURCE")
    path = Path(value).expanduser()
    # Dagster resolves a relative base_dir against the services' working directory; the
    # instance folder is the usual one.
    return path if path.is_absolute() else (home / path).resolve()


@dataclass
class SourceFiles:
    """Read-only sqlite3 connections to one layout's files; private copies live in `scratch`."""

    layout: SourceLayout
    scratch: Path
    copies: dict[Path, Path] = field(default_factory=dict)

    def readable_path(self, path: Path) -> tuple[Path, bool]:
        """(path to open, immutable?) — a copy when the file's -wal still holds changes."""
        if path in self.copies:
            return self.copies[path], False
        if _has_pending_wal(path):
            target = self.scratch / "wal-copies" / hashlib.sha1(str(path).encode()).hexdigest()
            target.mkdir(parents=True, exist_ok=True)
            for suffix in ("", "-wal"):
                src = Path(f"{path}{suffix}")
                if src.exists():
                    shutil.copyfile(src, target / f"copy.db{suffix}")
            self.copies[path] = target / "copy.db"
            log.info("%s has a non-empty -wal; reading a private copy", path)
            return self.copies[path], False
        return path, True

    def as_json(self) -> dict:
        """For a helper process (pump.py, verify_worker.py): the same files, the same copies."""
        layout = {k: (None if v is None else str(v)) for k, v in asdict(self.layout).items()}
        return {"layout": layout, "scratch": str(self.scratch),
                "copies": [[str(a), str(b)] for a, b in self.copies.items()]}

    @classmethod
    def from_json(cls, data: dict) -> SourceFiles:
        layout = SourceLayout(**{k: (None if v is None else Path(v))
                                 for k, v in data["layout"].items()})
        return cls(layout, Path(data["scratch"]), {Path(a): Path(b) for a, b in data["copies"]})

    def uri(self, path: Path) -> str:
        real, immutable = self.readable_path(path)
        flags = "mode=ro&immutable=1" if immutable else "mode=ro"
        return f"file:{quote(str(real))}?{flags}"

    def connect(self, path: Path, *, required: bool = True,
                check_same_thread: bool = True) -> sqlite3.Connection | None:
        """A read-only connection, checked to be a SQLite database. None if absent and optional."""
        if not path.exists():
            if required:
                raise UnreadableSourceError(str(path), "no such file")
            return None
        if not os.access(path, os.R_OK):
            raise UnreadableSourceError(str(path), "permission denied")
        try:
            conn = sqlite3.connect(self.uri(path), uri=True, check_same_thread=check_same_thread)
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except PermissionError:
            raise UnreadableSourceError(str(path), "permission denied") from None
        except (sqlite3.DatabaseError, OSError) as exc:
            raise sqlite_error(path, exc) from None
        return conn


def check_integrity(files: SourceFiles, paths: list[Path],
                    tick: Callable[[int], None] | None = None) -> None:
    """Read every page of every file (SQLite's `PRAGMA quick_check`: the b-trees, their cells
    and free lists; not whether indexes match their tables) before anything is written, two
    files at a time. The first damaged or unreadable one raises CorruptSourceError or
    UnreadableSourceError, naming it."""
    def check(path: Path) -> None:
        conn = files.connect(path, required=path != files.layout.schedules_db,
                             check_same_thread=False)
        if conn is None:
            return
        try:
            problem = conn.execute("PRAGMA quick_check(1)").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise sqlite_error(path, exc) from None
        finally:
            conn.close()
        if problem != "ok":  # e.g. "*** in database main ***\nPage 5: btreeInitPage() ..."
            raise CorruptSourceError(str(path), " ".join(
                problem.replace("*** in database main ***", "").split()))

    # SQLite reads without the GIL, so two threads use both cores of a small server.
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="dagpg-check") as pool:
        for _ in pool.map(check, paths):
            if tick:
                tick(1)


def sqlite_error(path: Path, exc: Exception):
    text = str(exc)
    if isinstance(exc, sqlite3.OperationalError) and "unable to open" in text:
        if not os.access(path, os.R_OK):
            return UnreadableSourceError(str(path), "permission denied")
        return UnreadableSourceError(str(path), text)
    return CorruptSourceError(str(path), text)


def _has_pending_wal(path: Path) -> bool:
    wal = Path(f"{path}-wal")
    journal = Path(f"{path}-journal")
    try:
        return (wal.exists() and wal.stat().st_size > 0) or journal.exists()
    except OSError:
        return False


def fingerprint(layout: SourceLayout) -> str:
    """Identifies the source's content cheaply: each file's name, size and mtime."""
    digest = hashlib.sha256()
    for path in layout.files():
        for suffix in ("", "-wal"):
            p = Path(f"{path}{suffix}")
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            digest.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)
