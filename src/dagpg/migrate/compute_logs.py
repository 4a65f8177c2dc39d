"""The source's compute logs (the captured stdout/stderr of each run's steps, and of sensor
and schedule evaluations), copied into the target instance's compute-log folder, then compared
through Dagster's compute log manager.

Dagster's LocalComputeLogManager keeps them as files `<base_dir>/<log key>.out`, `.err` and
`.complete`; a run's keys are `[run_id, "compute_logs", step]`, a tick's are in its tick body.
The files are copied in the order of their paths, in units of up to UNIT_FILES files committed
as steps of the migration (`logs:<n>`, detail: the unit's last path and its bytes), so a resumed
migration continues after the last committed unit. Each file is written under a temporary name,
read back and compared with the source's SHA-256, then renamed into place: a file in the target
is whole or absent, and a unit a kill interrupted is simply redone. The source is only read.
Logs kept elsewhere (S3, Azure, a custom manager) are not copied; the report says so.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from dagpg.instance import Instance
from dagpg.migrate import state
from dagpg.migrate.errors import MigrateError, UnreadableSourceError
from dagpg.migrate.report import Verification
from dagpg.migrate.source import SourceFiles, SourceLayout, sqlite_error

log = logging.getLogger(__name__)

LOCAL_MANAGER = "LocalComputeLogManager"
SUBFOLDER = "compute_logs"  # Dagster's log key: [run_id, "compute_logs", file_key]
_EXTENSIONS = ("out", "err", "complete")
UNIT_FILES = 1000
_CHUNK = 1 << 20
_TMP_SUFFIX = ".dagpg-copy"


@dataclass
class LogsPlan:
    """Where the logs are and what there is to copy (found while inspecting, before writing)."""

    source: Path | None = None
    target: Path | None = None
    skipped: str | None = None                        # why nothing is copied
    files: list[str] = field(default_factory=list)    # relative paths, sorted
    runs: list[str] = field(default_factory=list)     # runs with a compute_logs folder
    ticks: list[list[str]] = field(default_factory=list)  # log keys of sensor/schedule ticks
    bytes: int = 0

    def as_dict(self) -> dict:
        return {"source": None if self.source is None else str(self.source),
                "target": None if self.target is None else str(self.target),
                "runs": len(self.runs), "ticks": len(self.ticks), "files": len(self.files),
                "bytes": self.bytes, "skipped": self.skipped}


def plan(files: SourceFiles, instance: Instance) -> LogsPlan:
    """The source's captured logs of its runs (each run's compute_logs folder) and of its
    sensor and schedule ticks (the log keys in job_ticks), each file checked readable."""
    source, why = _source_dir(files.layout)
    if source is None:
        return LogsPlan(skipped=why)
    target, why = _target_dir(instance)
    if target is None:
        return LogsPlan(source=source, skipped=why)
    found = LogsPlan(source=source, target=target)
    if not source.is_dir():
        found.skipped = f"{source} does not exist: no compute logs to copy"
        return found
    paths: list[Path] = []
    for run_id in _run_ids(files):
        folder = source / run_id / SUBFOLDER
        if run_id and _inside(source, folder) and folder.is_dir():
            found.runs.append(run_id)
            paths += [folder / name for name in _names(folder)]
    for key in _tick_log_keys(files):
        *namespace, base = key
        folder = source.joinpath(*namespace)
        kept = [folder / f"{base}.{ext}" for ext in _EXTENSIONS]
        kept = [p for p in kept if _inside(source, p) and p.is_file()]
        if kept:
            found.ticks.append(key)
            paths += kept
    for path in paths:
        if not os.access(path, os.R_OK):
            raise UnreadableSourceError(str(path), "permission denied")
        found.bytes += path.stat().st_size
    found.files = sorted({p.relative_to(source).as_posix() for p in paths})
    return found


def copy(conn, migration_id: int, logs: LogsPlan,
         tick: Callable[[int], None] | None = None) -> int:
    """Copy what is left after the committed units; returns the files copied now."""
    if logs.skipped or not logs.files:
        return 0
    done = state.steps(conn, migration_id, "logs:")
    conn.rollback()
    after = max((d.get("last", "") for _, _, d in done), default="")
    if tick and done:
        tick(sum(rows for _, rows, _ in done))
    copied = 0
    left = [f for f in logs.files if f > after]
    for unit_no, start in enumerate(range(0, len(left), UNIT_FILES), len(done) + 1):
        unit = left[start:start + UNIT_FILES]
        size = sum(_copy_file(logs.source / rel, logs.target / rel) for rel in unit)
        with conn.cursor() as cur:
            state.record_step(cur, migration_id, f"logs:{unit_no}", len(unit),
                              {"last": unit[-1], "bytes": size})
        conn.commit()
        copied += len(unit)
        if tick:
            tick(len(unit))
    return copied


def compare(result: Verification, logs: LogsPlan, target_manager,
            tick: Callable[[str], None] = lambda _c: None) -> None:
    """Every run's and tick's captured logs, read through Dagster's compute log managers,
    equal on both sides: the same log keys in each run, the same stdout, stderr, completeness."""
    from dagster._core.storage.compute_log_manager import ComputeIOType
    from dagster._core.storage.local_compute_log_manager import LocalComputeLogManager

    if logs.skipped or not logs.files:
        return
    if not isinstance(target_manager, LocalComputeLogManager):
        result.differ("compute logs", "*", f"the target's compute log manager is "
                      f"{type(target_manager).__name__}, not {LOCAL_MANAGER}")
        return
    source_manager = LocalComputeLogManager(str(logs.source))
    keys: list[tuple[str, ...]] = []
    for run_id in logs.runs:
        prefix = [run_id, SUBFOLDER]
        keys_s, keys_t = (_keys(m, prefix, ComputeIOType) for m in (source_manager,
                                                                    target_manager))
        for key in sorted(keys_s - keys_t):
            result.differ("compute logs", "/".join(key), "missing in the target")
        for key in sorted(keys_t - keys_s):
            result.differ("compute logs", "/".join(key), "only in the target")
        keys += sorted(keys_s & keys_t)
    keys += [tuple(k) for k in logs.ticks]
    for key in keys:
        result.count("compute logs")
        a, b = source_manager.get_log_data(list(key)), target_manager.get_log_data(list(key))
        if (a.stdout, a.stderr) != (b.stdout, b.stderr):
            result.differ("compute logs", "/".join(key), "captured output differs")
        elif source_manager.is_capture_complete(list(key)) != \
                target_manager.is_capture_complete(list(key)):
            result.differ("compute logs", "/".join(key), "completeness differs")
    tick("compute logs")


def _run_ids(files: SourceFiles) -> list[str]:
    conn = files.connect(files.layout.runs_db)
    try:
        return sorted(r[0] for r in conn.execute("SELECT run_id FROM runs"))
    except sqlite3.DatabaseError as exc:
        raise sqlite_error(files.layout.runs_db, exc) from None
    finally:
        conn.close()


def _tick_log_keys(files: SourceFiles) -> list[list[str]]:
    """The log keys sensor and schedule ticks recorded (their evaluation's captured logs)."""
    conn = files.connect(files.layout.schedules_db, required=False)
    if conn is None:
        return []
    try:
        rows = conn.execute("SELECT DISTINCT json_extract(tick_body, '$.log_key') FROM "
                            "job_ticks WHERE tick_body LIKE '%\"log_key\"%'").fetchall()
        keys = [json.loads(r[0]) for r in rows if r[0]]
    except (sqlite3.DatabaseError, ValueError):
        return []  # an old schedules.db without job_ticks: no tick logs
    finally:
        conn.close()
    return sorted(k for k in keys if isinstance(k, list) and k
                  and all(isinstance(p, str) and p for p in k))


# -- where the logs are -----------------------------------------------------------------------
def _source_dir(layout: SourceLayout) -> tuple[Path | None, str | None]:
    if layout.yaml_path is None:  # SOURCE is the base_dir: Dagster's default is beside it
        return layout.given / "storage", None
    block = _compute_logs_block(layout.yaml_path)
    return _local_dir(block, layout.given, f"the source's compute logs ({layout.yaml_path})")


def _target_dir(instance: Instance) -> tuple[Path | None, str | None]:
    block = _compute_logs_block(instance.yaml_path)
    found, why = _local_dir(block, instance.home, f"the target's compute logs "
                            f"({instance.yaml_path})")
    return (None, why) if found is None else (Path(instance.compute_logs_dir), None)


def _compute_logs_block(yaml_path: Path) -> dict:
    try:
        data = yaml.safe_load(Path(yaml_path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return {}
    block = data.get("compute_logs") if isinstance(data, dict) else None
    return block if isinstance(block, dict) else {}


def _local_dir(block: dict, home: Path, what: str) -> tuple[Path | None, str | None]:
    """The folder of a LocalComputeLogManager block (Dagster's default: <home>/storage)."""
    if block and block.get("class") != LOCAL_MANAGER:
        return None, (f"{what} are kept by {block.get('class')}, not in files of a "
                      f"{LOCAL_MANAGER}: not copied")
    base = (block.get("config") or {}).get("base_dir") if block else None
    if isinstance(base, dict) and set(base) == {"env"}:
        base = os.environ.get(str(base["env"]))
        if not base:
            return None, f"{what}: base_dir comes from an environment variable that is not set"
    if base is None:
        return home / "storage", None
    if not isinstance(base, str):
        return None, f"{what}: base_dir is not a path"
    path = Path(base).expanduser()
    return (path if path.is_absolute() else (home / path)), None


# -- copying -----------------------------------------------------------------------------------
def _names(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder)
                  if e.is_file(follow_symlinks=False) and not e.name.endswith(_TMP_SUFFIX))


def _inside(base: Path, path: Path) -> bool:
    """`path` stays under `base` (log keys come from the source's data: no `..` escapes)."""
    return ".." not in path.relative_to(base).parts if path.is_relative_to(base) else False


def _copy_file(source: Path, target: Path) -> int:
    """Copy through a temporary name, checked by SHA-256, then renamed into place."""
    tmp = target.with_name(f".{target.name}{_TMP_SUFFIX}")
    digest = hashlib.sha256()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(source, "rb") as src:
            stat = os.fstat(src.fileno())
            with open(tmp, "wb") as dst:
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    dst.write(chunk)
                dst.flush()
                os.fsync(dst.fileno())
    except PermissionError as exc:
        if exc.filename == str(source):
            raise UnreadableSourceError(str(source), "permission denied") from None
        raise _write_error(target, exc) from None
    except OSError as exc:
        raise _write_error(target, exc) from None
    if _sha256(tmp) != digest.hexdigest():
        tmp.unlink(missing_ok=True)
        raise MigrateError(f"the copy of {source} in {target.parent} does not read back as "
                           "written (SHA-256 differs); check that disk, then run the command "
                           "again")
    os.utime(tmp, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(tmp, target)
    return stat.st_size


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _write_error(where: Path, exc: OSError) -> MigrateError:
    return MigrateError(f"cannot write compute logs into {where} ({exc.strerror or exc}); free "
                        "space or fix its permissions, then run the command again")


def _keys(manager, prefix: list[str], io_types) -> set[tuple[str, ...]]:
    keys: set[tuple[str, ...]] = set()
    for io_type in (io_types.STDOUT, io_types.STDERR):
        try:
            keys |= {tuple(k) for k in manager.get_log_keys_for_log_key_prefix(prefix, io_type)}
        except FileNotFoundError:
            pass
    return keys
