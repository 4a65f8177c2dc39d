"""`dagpg backup`: one folder per backup, written under a temporary name and renamed only when
complete and verified.

pg_dump and the manifest's row counts share one snapshot: a REPEATABLE READ transaction exports
it, pg_dump imports it (--snapshot), and the counts are taken in that transaction while pg_dump
runs, so they describe exactly what is in the dump even while Dagster keeps writing. The same
session holds the advisory lock that keeps two backups (or a backup and a restore) apart.
"""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from dagpg import __version__, children, pg
from dagpg.backup import catalog, files, lock, tools
from dagpg.backup import manifest as mf
from dagpg.backup.errors import BackupError, DestinationError, ToolFailedError
from dagpg.backup.folders import backup_directory
from dagpg.dbtables import has_table
from dagpg.errors import ConfigurationError, DagpgError
from dagpg.instance import Instance
from dagpg.progress import ProgressFn, reporter
from dagpg.settings import KitSettings

log = logging.getLogger(__name__)

_REPORT_EVERY_S = 5.0


@dataclass(frozen=True)
class BackupResult:
    name: str
    path: Path
    kind: str
    started_at: datetime
    finished_at: datetime
    size_bytes: int
    dump_sha256: str
    row_counts: dict[str, int]
    manifest: dict[str, Any]
    catalogued: bool

    @property
    def duration_s(self) -> float:
        return (self.finished_at - self.started_at).total_seconds()

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "path": str(self.path), "kind": self.kind,
            "started_at": mf.iso(self.started_at), "finished_at": mf.iso(self.finished_at),
            "duration_s": round(self.duration_s, 3), "size_bytes": self.size_bytes,
            "dump_sha256": self.dump_sha256, "row_counts": self.row_counts,
            "catalogued": self.catalogued,
        }


@dataclass(frozen=True)
class BackupSkipped:
    """What `backup_if_due` did instead of a backup: nothing, and why."""

    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"skipped": True, "reason": self.reason}


def create_backup(
    instance: Instance,
    settings: KitSettings,
    *,
    directory: str | os.PathLike | None = None,
    kind: str = "cli",
    suffix: str | None = None,
    progress: ProgressFn | None = None,
) -> BackupResult:
    """Back up `instance` (database, compute logs, dagster.yaml, workspace.yaml) into a new
    folder of the backups folder (`directory`, else dagpg.backup.directory). Nothing that looks
    like a backup is left when it fails."""
    with pg.lost_connection(instance.target, "backing up"):
        return _create_backup(instance, backup_directory(settings, directory), kind=kind,
                              suffix=suffix, progress=progress)


def _create_backup(instance: Instance, directory: Path, *, kind: str,
                   suffix: str | None, progress: ProgressFn | None) -> BackupResult:
    say = reporter(progress)
    started = mf.now_utc()
    _check_logs_dir(instance)
    _prepare(directory)
    conn = pg.connect(instance.target)  # a wrong password or a server down fails here
    partial: Path | None = None
    name = None
    try:
        lock.acquire(conn, instance.target.where)
        with conn.cursor() as cur:  # the snapshot's transaction waits for pg_dump, idle
            cur.execute("SET idle_in_transaction_session_timeout = 0; SET statement_timeout = 0")
        conn.commit()  # the lock is the session's; the snapshot transaction starts below
        conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
        major, server_version = pg.server_version(conn)
        pg_dump = tools.program("pg_dump", major)
        pg_restore = tools.companion(pg_dump, "pg_restore")
        name, partial = _make_partial(directory, started, suffix)
        with conn.cursor() as cur:
            cur.execute("SELECT pg_export_snapshot()")
            snapshot = cur.fetchone()[0]
            say(f"dumping {instance.target.where} with {pg_dump.name} {pg_dump.version}")
            dump = _Dump(pg_dump, instance, partial / mf.DUMP_FILE, snapshot)
            try:
                counts = mf.row_counts(cur)
                revisions = _revisions(cur)
                say("archiving compute logs")
                logs = _write(directory, mf.LOGS_FILE, lambda: files.archive_logs(
                    instance.compute_logs_dir, partial / mf.LOGS_FILE, exclude=directory))
                config_files = _copy_config(instance, partial)
                dump.wait(say)
            finally:
                dump.stop()
        conn.rollback()  # ends the snapshot; the advisory lock belongs to the session
        files.make_private(partial / mf.DUMP_FILE)
        say("checking the backup")
        names = [mf.DUMP_FILE, mf.LOGS_FILE, *config_files]
        described = mf.describe_files(partial, names)
        toc = _check(pg_restore, instance, partial, counts)
        finished = mf.now_utc()
        manifest = _manifest(
            instance, name=name, kind=kind, started=started, finished=finished,
            server=(server_version, major), pg_dump=pg_dump, revisions=revisions, counts=counts,
            logs=logs, config_files=config_files, described=described, toc=toc)
        _write(directory, mf.MANIFEST, lambda: mf.write_manifest(partial, manifest))
        for item in partial.iterdir():
            files.fsync_path(item)
        final = directory / name
        os.replace(partial, final)
        partial = None
        files.fsync_path(directory)
        catalogued = _catalogue(conn, manifest, final)
        log.info("backup %s written to %s", name, final)
        return BackupResult(
            name=name, path=final, kind=kind, started_at=started, finished_at=finished,
            size_bytes=sum(f["size"] for f in described.values()),
            dump_sha256=described[mf.DUMP_FILE]["sha256"], row_counts=counts,
            manifest=manifest, catalogued=catalogued,
        )
    except BaseException as exc:
        if partial is not None:
            files.remove_tree(partial)
        if name is not None and not isinstance(exc, KeyboardInterrupt):
            _catalogue_failure(conn, name, directory / name, kind, started, exc)
        if isinstance(exc, ToolFailedError):
            raise ToolFailedError(
                f"{exc}; no backup was kept in {directory}; fix the cause and run `dagpg backup` "
                "again") from None
        raise
    finally:
        conn.close()


def _manifest(instance: Instance, *, name, kind, started, finished, server, pg_dump,
              revisions, counts, logs, config_files, described, toc) -> dict[str, Any]:
    return {
        "format": mf.FORMAT,
        "name": name,
        "kind": kind,
        "started_at": mf.iso(started),
        "finished_at": mf.iso(finished),
        "duration_s": round((finished - started).total_seconds(), 3),
        "instance": {k: v for k, v in instance.target.as_dict().items()
                     if k in ("host", "port", "database", "user")}
        | {"dagster_home": str(instance.home)},
        "server": {"version": server[0], "major": server[1]},
        "pg_dump": {"version": pg_dump.version, "major": pg_dump.major},
        "dagster_version": _version("dagster"),
        "dagster_postgres_version": _version("dagster-postgres"),
        "dagpg_version": __version__,
        "alembic": revisions,
        "dump_file": mf.DUMP_FILE,
        "row_counts": counts,
        "compute_logs": {"source": str(instance.compute_logs_dir), **logs},
        "config_files": config_files,
        "files": described,
        "verified": {"at": mf.iso(finished), "toc_entries": toc,
                     "checks": ["sha256", "pg_restore --list", "compute logs archive"]},
    }


def backup_if_due(
    instance: Instance,
    settings: KitSettings,
    *,
    older_than_h: float,
    directory: str | os.PathLike | None = None,
    kind: str = "cli",
    progress: ProgressFn | None = None,
) -> BackupResult | BackupSkipped:
    """A backup (as `create_backup`) unless the newest one is younger than `older_than_h` hours
    or one is running now: for the OS task that backs up only when Dagster's schedule did not."""
    if not older_than_h >= 0:  # also refuses NaN
        raise ConfigurationError(
            f"the backup age limit must be 0 hours or more, not {older_than_h:g}; give a "
            "number of hours (--if-older-than)")
    due, why = backup_due(instance, older_than_h)
    if not due:
        log.info("no backup taken: %s", why)
        return BackupSkipped(why)
    return create_backup(instance, settings, directory=directory, kind=kind, progress=progress)


def backup_due(instance: Instance, max_age_h: float) -> tuple[bool, str]:
    """Whether a backup is due: (False, why) when the newest completed backup (catalogued,
    folder present) is younger than `max_age_h` or another backup is running right now."""
    with pg.connection(instance.target) as conn:
        if not lock.is_free(conn):
            return False, "another backup of this instance is running now"
    newest = catalog.latest_backup(instance)
    if newest is not None and newest.path.is_dir():
        age_h = (mf.now_utc() - newest.finished_at).total_seconds() / 3600
        if age_h < max_age_h:
            return False, (f"backup {newest.name} finished {age_h:.1f} h ago, less than "
                           f"{max_age_h:g} h")
    return True, f"no backup younger than {max_age_h:g} h"


class _Dump:
    """pg_dump running in the background, reporting how much it has written."""

    def __init__(self, program, instance: Instance, path: Path, snapshot: str):
        self.path = path
        self.instance = instance
        self.stderr = tempfile.TemporaryFile()
        argv = tools.dump_argv(program, path, snapshot=snapshot)
        log.info("running %s", " ".join(argv))
        # The dump is private from its first byte: created 0600 here (pg_dump opens it with
        # "wb", which keeps the mode), and pg_dump's umask covers any file it makes itself.
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        self.proc = children.popen(argv, umask=0o077, env=tools.child_env(instance.target),
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=self.stderr)

    def wait(self, say: ProgressFn) -> None:
        last = time.monotonic()
        while True:
            try:
                code = self.proc.wait(timeout=1)
                break
            except subprocess.TimeoutExpired:
                if time.monotonic() - last >= _REPORT_EVERY_S:
                    last = time.monotonic()
                    size = self.path.stat().st_size if self.path.exists() else 0
                    say(f"dumping: {human_bytes(size)} written")
        if code != 0:
            self.stderr.seek(0)
            text = self.stderr.read().decode("utf-8", "replace")
            raise tools.failure("pg_dump", code, text, self.instance.target)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.stderr.close()


def _check_logs_dir(instance: Instance) -> None:
    """The compute logs folder is archived and, on restore, replaced as a whole: it must not
    hold DAGSTER_HOME (dagster.yaml, a local cluster's data)."""
    logs, home = instance.compute_logs_dir.absolute(), instance.home.absolute()
    if logs == home or logs in home.parents:
        raise BackupError(
            f"the compute logs folder {logs} contains DAGSTER_HOME; give compute_logs a folder "
            f"of its own (compute_logs.config.base_dir in {instance.yaml_path})")


def _prepare(directory: Path) -> None:
    if directory.exists() and not directory.is_dir():
        raise DestinationError(str(directory), "not a folder")
    try:
        files.private_dir(directory)
        # Fail before any database work when the folder cannot be written (permissions,
        # read-only file system): create and remove a probe file.
        fd, probe = tempfile.mkstemp(prefix=f"{mf.PARTIAL_PREFIX}probe-", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise DestinationError(str(directory), exc.strerror or str(exc)) from None


def _write(directory: Path, what: str, writer: Callable[[], Any]) -> Any:
    """Run a writer; an OSError (disk full, I/O error) becomes a DestinationError."""
    try:
        return writer()
    except OSError as exc:
        raise DestinationError(
            str(directory), f"writing {what} failed ({exc.strerror or exc})") from None


def _make_partial(directory: Path, started: datetime, suffix: str | None) -> tuple[str, Path]:
    """A free name (same-second backups get -2, -3, ...) and its `.partial-` folder, 0700."""
    base = mf.new_name(started, suffix)
    name, n = base, 1
    try:
        while (directory / name).exists() or (directory / f"{mf.PARTIAL_PREFIX}{name}").exists():
            n += 1
            name = f"{base}-{n}"
        partial = directory / f"{mf.PARTIAL_PREFIX}{name}"
        partial.mkdir(mode=0o700)
        files.make_private(partial)
    except OSError as exc:
        raise DestinationError(str(directory), exc.strerror or str(exc)) from None
    return name, partial


def _copy_config(instance: Instance, partial: Path) -> list[str]:
    copied = []
    for name in mf.CONFIG_FILES:
        source = instance.home / name
        if source.is_file():
            _write(partial.parent, name,
                   lambda s=source, t=partial / name: files.copy_private(s, t))
            copied.append(name)
    return copied


def _revisions(cur) -> dict[str, str | None]:
    found = {}
    for key, table in (("dagster", "public.alembic_version"), ("dagpg", "dagpg.alembic_version")):
        if has_table(cur, table):
            cur.execute(f"SELECT max(version_num) FROM {table}")  # noqa: S608 (fixed names)
            found[key] = cur.fetchone()[0]
        else:
            found[key] = None
    return found


def _check(pg_restore, instance: Instance, folder: Path, counts: dict[str, int]) -> int:
    """pg_restore reads the archive's table of contents; every table with rows has its data;
    the compute logs archive reads back. Returns the number of TOC entries."""
    listing = tools.run([str(pg_restore.path), "--list", str(folder / mf.DUMP_FILE)],
                        instance.target).stdout
    entries = [ln for ln in listing.splitlines() if ln and not ln.startswith(";")]
    data = {" ".join(ln.split()[5:7]) for ln in entries if " TABLE DATA " in ln}
    for key, rows in counts.items():
        schema, table = mf.split_table(key)
        if rows and f"{schema} {table}" not in data:
            raise ToolFailedError(f"the dump has no data for table {key} ({rows} rows)")
    files.check_archive(folder / mf.LOGS_FILE)
    return len(entries)


def _catalogue(conn, manifest: dict[str, Any], path: Path) -> bool:
    try:
        conn.readonly = False
        conn.isolation_level = None  # the server's default (READ COMMITTED)
        with conn:
            if not catalog.has_catalog(conn):
                log.warning("no backup catalog in this database (run `dagpg db upgrade`); "
                            "backup %s is on disk only", manifest["name"])
                return False
            catalog.record(conn, manifest, path)
        return True
    except Exception as exc:  # noqa: BLE001  (the backup on disk is complete either way)
        log.warning("backup %s could not be catalogued: %s", manifest["name"], exc)
        return False


def _catalogue_failure(conn, name, path, kind, started, exc: BaseException) -> None:
    error = str(exc) if isinstance(exc, DagpgError) else f"{type(exc).__name__}: {exc}"
    failed = {"name": name, "kind": kind, "started_at": mf.iso(started),
              "finished_at": mf.iso(mf.now_utc()), "files": {}}
    try:
        if conn.closed:
            return
        conn.rollback()
        conn.readonly = False
        conn.isolation_level = None
        with conn:
            if catalog.has_catalog(conn):
                catalog.record(conn, failed, path, status="failed", error=error)
    except Exception as record_exc:  # noqa: BLE001
        log.info("could not record the failed backup %s: %s", name, record_exc)


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def human_bytes(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"
