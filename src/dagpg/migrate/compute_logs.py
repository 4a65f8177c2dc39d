"""The source's compute logs (each step's captured stdout/stderr), copied into the target
instance's compute-log folder, then compared through Dagster's compute log manager.

Dagster's LocalComputeLogManager keeps them as files `<base_dir>/<run_id>/compute_logs/<key>.out`,
`.err` and `.complete` (the UI reads them there). Runs are copied in sorted order, in units of up
to UNIT_FILES files committed as steps of the migration (`logs:<n>`, detail: the unit's last
run, files, bytes), so a resumed migration continues after the last committed unit. Each file is
written under a temporary name, read back and compared with the source's SHA-256, then renamed
into place: a file in the target is whole or absent, and a unit a kill interrupted is redone.
The source is only read. Logs kept elsewhere (S3, Azure, a custom manager) are not copied; the
report says so.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from dagpg.instance import Instance
from dagpg.migrate import state
from dagpg.migrate.errors import MigrateError, UnreadableSourceError
from dagpg.migrate.report import Verification
from dagpg.migrate.source import SourceLayout

log = logging.getLogger(__name__)

LOCAL_MANAGER = "LocalComputeLogManager"
SUBFOLDER = "compute_logs"  # Dagster's log key: [run_id, "compute_logs", file_key]
UNIT_FILES = 1000
_CHUNK = 1 << 20
_TMP_SUFFIX = ".dagpg-copy"


@dataclass
class LogsPlan:
    """Where the logs are and what there is to copy (found while inspecting, before writing)."""

    source: Path | None = None
    target: Path | None = None
    skipped: str | None = None                      # why nothing is copied
    runs: dict[str, int] = field(default_factory=dict)  # run id -> files in its folder
    bytes: int = 0

    @property
    def files(self) -> int:
        return sum(self.runs.values())

    def as_dict(self) -> dict:
        return {"source": None if self.source is None else str(self.source),
                "target": None if self.target is None else str(self.target),
                "runs": len(self.runs), "files": self.files, "bytes": self.bytes,
                "skipped": self.skipped}


def plan(layout: SourceLayout, instance: Instance, run_ids: list[str]) -> LogsPlan:
    """Find the source's compute logs of `run_ids` and check each file can be read."""
    source, why = _source_dir(layout)
    if source is None:
        return LogsPlan(skipped=why)
    target, why = _target_dir(instance)
    if target is None:
        return LogsPlan(source=source, skipped=why)
    found = LogsPlan(source=source, target=target)
    if not source.is_dir():
        found.skipped = f"{source} does not exist: no compute logs to copy"
        return found
    for run_id in run_ids:
        folder = source / run_id / SUBFOLDER
        if not run_id or not folder.is_dir():
            continue
        names = _names(folder)
        for name in names:
            path = folder / name
            if not os.access(path, os.R_OK):
                raise UnreadableSourceError(str(path), "permission denied")
            found.bytes += path.stat().st_size
        found.runs[run_id] = len(names)
    return found


def copy(conn, migration_id: int, logs: LogsPlan,
         tick: Callable[[int], None] | None = None) -> int:
    """Copy what is left after the committed units; returns the files copied now."""
    if logs.skipped or not logs.runs:
        return 0
    done = state.steps(conn, migration_id, "logs:")
    conn.rollback()
    after = max((d.get("last_run", "") for _, _, d in done), default="")
    if tick and done:
        tick(sum(rows for _, rows, _ in done))
    copied = 0
    for unit_no, runs in enumerate(_units(logs, after), len(done) + 1):
        files = size = 0
        for run_id in runs:
            n, b = _copy_run(logs.source / run_id / SUBFOLDER, logs.target / run_id / SUBFOLDER)
            files, size = files + n, size + b
        with conn.cursor() as cur:
            state.record_step(cur, migration_id, f"logs:{unit_no}", files,
                              {"last_run": runs[-1], "runs": len(runs), "bytes": size})
        conn.commit()
        copied += files
        if tick:
            tick(files)
    return copied


def compare(result: Verification, logs: LogsPlan, target_manager,
            tick: Callable[[str], None] = lambda _c: None) -> None:
    """Each run's captured logs, read through Dagster's compute log managers, equal on both
    sides (keys, stdout, stderr, completeness)."""
    from dagster._core.storage.compute_log_manager import ComputeIOType
    from dagster._core.storage.local_compute_log_manager import LocalComputeLogManager

    if logs.skipped or not logs.runs:
        return
    if not isinstance(target_manager, LocalComputeLogManager):
        result.differ("compute logs", "*", f"the target's compute log manager is "
                      f"{type(target_manager).__name__}, not {LOCAL_MANAGER}")
        return
    source_manager = LocalComputeLogManager(str(logs.source))
    for run_id in logs.runs:
        prefix = [run_id, SUBFOLDER]
        keys_s, keys_t = (_keys(m, prefix, ComputeIOType) for m in (source_manager,
                                                                    target_manager))
        for key in sorted(keys_s - keys_t):
            result.differ("compute logs", "/".join(key), "missing in the target")
        for key in sorted(keys_t - keys_s):
            result.differ("compute logs", "/".join(key), "only in the target")
        for key in sorted(keys_s & keys_t):
            result.count("compute logs")
            a, b = source_manager.get_log_data(list(key)), target_manager.get_log_data(list(key))
            if (a.stdout, a.stderr) != (b.stdout, b.stderr):
                result.differ("compute logs", "/".join(key), "captured output differs")
            elif source_manager.is_capture_complete(list(key)) != \
                    target_manager.is_capture_complete(list(key)):
                result.differ("compute logs", "/".join(key), "completeness differs")
        tick("compute logs")


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


def _units(logs: LogsPlan, after: str) -> Iterator[list[str]]:
    unit: list[str] = []
    files = 0
    for run_id in sorted(logs.runs):
        if run_id <= after:
            continue
        unit.append(run_id)
        files += logs.runs[run_id]
        if files >= UNIT_FILES:
            yield unit
            unit, files = [], 0
    if unit:
        yield unit


def _copy_run(source: Path, target: Path) -> tuple[int, int]:
    try:
        target.mkdir(parents=True, exist_ok=True)
        for leftover in target.glob(f".*{_TMP_SUFFIX}"):  # of a killed attempt
            leftover.unlink()
    except OSError as exc:
        raise _write_error(target, exc) from None
    files = size = 0
    for name in _names(source):
        size += _copy_file(source / name, target / name)
        files += 1
    return files, size


def _copy_file(source: Path, target: Path) -> int:
    """Copy through a temporary name, checked by SHA-256, then renamed into place."""
    tmp = target.with_name(f".{target.name}{_TMP_SUFFIX}")
    digest = hashlib.sha256()
    try:
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
