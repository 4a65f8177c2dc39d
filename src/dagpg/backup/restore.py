"""`dagpg restore`: put an instance back as a backup recorded it.

Order matters, so that a failure at any step leaves something recoverable:
1. check the backup's checksums and its compute logs archive (a corrupt backup, or one whose
   archive would write outside the logs folder, is refused before anything changes);
2. refuse while the daemon heart-beats (unless forced);
3. take a safety backup of what is there now (when there is anything to save);
4. load the dump in one transaction that also checks every table's row count (all or nothing);
5. swap in the compute logs (the old folder is renamed aside, not deleted, until the new one
   is in place);
6. bring the backup catalog in step with the folders on disk.
"""

from __future__ import annotations

import logging
import os
import shutil
import tarfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from psycopg2 import sql

from dagpg import pg
from dagpg.backup import catalog, files, load, lock, tools
from dagpg.backup import manifest as mf
from dagpg.backup.create import create_backup
from dagpg.backup.errors import (
    BackupCorruptError,
    BackupError,
    RestoreFailedError,
    RestoreRefusedError,
)
from dagpg.backup.folders import Folder, backup_directory, locate, scan
from dagpg.dbtables import has_table
from dagpg.heartbeats import running_refusal, still_running
from dagpg.instance import Instance
from dagpg.progress import ProgressFn, reporter
from dagpg.settings import KitSettings

log = logging.getLogger(__name__)


# Tables whose rows are history worth a safety backup (the rest is created by `db upgrade`).
_HISTORY_TABLES = ("runs", "event_logs", "jobs", "instigators", "job_ticks", "asset_keys",
                   "bulk_actions", "kvs")


@dataclass
class RestoreReport:
    name: str
    path: Path
    safety_backup: str | None
    tables: int
    rows: int
    compute_logs_files: int
    duration_s: float = 0.0
    dagster_revision: str | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path), "safety_backup": self.safety_backup,
                "tables": self.tables, "rows": self.rows,
                "compute_logs_files": self.compute_logs_files,
                "duration_s": round(self.duration_s, 3),
                "dagster_revision": self.dagster_revision, "notes": self.notes}


def restore_backup(
    instance: Instance,
    settings: KitSettings,
    name: str,
    *,
    directory: str | os.PathLike | None = None,
    force: bool = False,
    progress: ProgressFn | None = None,
) -> RestoreReport:
    """Restore backup `name` (in the backups folder, or a folder's path) over `instance`."""
    with pg.lost_connection(instance.target, "restoring"):
        return _restore(instance, settings, name, directory=directory, force=force,
                        progress=progress)


def _restore(instance: Instance, settings: KitSettings, name: str, *,
             directory: str | os.PathLike | None, force: bool,
             progress: ProgressFn | None) -> RestoreReport:
    say = reporter(progress)
    started = time.monotonic()
    directory = backup_directory(settings, directory)
    folder = locate(name, directory)
    manifest = folder.manifest
    say(f"checking backup {folder.name}")
    problems = mf.check_files(folder.path, manifest)
    if problems:
        raise BackupCorruptError(folder.name, problems[0])
    _check_logs_archive(folder)
    notes = _version_notes(manifest)

    with pg.connection(instance.target) as conn:
        _refuse_while_running(conn, settings, force)
        has_data = _has_data(conn) or _has_files(instance.compute_logs_dir)
        major = conn.server_version // 10000
        known = catalog.rows_by_name(conn)  # newer than the backup's copy of the catalog
    dump_major = int(manifest.get("pg_dump", {}).get("major") or 0)
    pg_restore = tools.program("pg_restore", max(major, dump_major))
    psql = tools.companion(pg_restore, "psql")

    safety = None
    if has_data:
        say("taking a safety backup of the instance as it is now")
        try:
            safety = create_backup(instance, settings, directory=directory,
                                   kind="pre-restore", suffix="pre-restore", progress=say).name
        except BackupError as exc:
            raise RestoreFailedError(
                f"the safety backup failed, so nothing was restored: {exc}") from None
    else:
        say("nothing to save first: the database holds no runs and there are no compute logs")

    conn = pg.connect(instance.target, autocommit=True)
    try:
        lock.acquire(conn, instance.target.where)
        say(f"restoring the database from {folder.name} (one transaction)")
        counts = manifest.get("row_counts") or {}
        try:
            load.load_dump(instance.target, folder.path / mf.DUMP_FILE, counts,
                           pg_restore=pg_restore, psql=psql, progress=say)
        except BackupError as exc:
            again = (f"the safety backup {safety} holds it too; " if safety else "")
            raise RestoreFailedError(
                f"restoring {folder.name} failed and was rolled back, so the database is as it "
                f"was: {exc}; {again}fix the cause and run `dagpg restore {folder.name}` again"
            ) from None
        say("restoring the compute logs")
        logs_files = _swap_logs(folder, instance.compute_logs_dir, safety)
        _sync_catalog(conn, directory, known)
    finally:
        conn.close()
    return RestoreReport(
        name=folder.name, path=folder.path, safety_backup=safety, tables=len(counts),
        rows=sum(counts.values()), compute_logs_files=logs_files,
        duration_s=time.monotonic() - started,
        dagster_revision=(manifest.get("alembic") or {}).get("dagster"), notes=notes,
    )


def _refuse_while_running(conn, settings: KitSettings, force: bool) -> None:
    limit = settings.verify.heartbeat_max_age_s
    beat = still_running(conn, limit)
    conn.rollback()
    if beat is not None and not force:
        services = f"{settings.services.daemon}, {settings.services.webserver}"
        raise RestoreRefusedError(running_refusal(beat, limit, services, "the restore"))
    if beat is not None:
        log.warning("restoring while the daemon heart-beats (--force)")


def _has_data(conn) -> bool:
    with conn.cursor() as cur:
        for table in _HISTORY_TABLES:
            if not has_table(cur, f"public.{table}"):
                continue
            cur.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(
                sql.Identifier("public", table)))
            if cur.fetchone()[0]:
                return True
    return False


def _has_files(path: Path) -> bool:
    return path.is_dir() and any(p.is_file() for p in path.rglob("*"))


def _check_logs_archive(folder: Folder) -> None:
    """Before anything changes: the compute logs archive reads, and holds only what
    archive_logs writes (its checksum proves only that it matches the manifest)."""
    archive = folder.path / mf.LOGS_FILE
    if not archive.is_file():
        return
    try:
        files.check_archive(archive)
    except ValueError as exc:  # an entry that would land outside the compute logs folder
        raise BackupCorruptError(folder.name, str(exc)) from None
    except (OSError, EOFError, tarfile.TarError) as exc:
        raise BackupCorruptError(folder.name, f"{mf.LOGS_FILE} cannot be read: {exc}") from None


def _swap_logs(folder: Folder, logs: Path, safety: str | None) -> int:
    """Unpack the backup's compute logs beside the live folder, then swap them in."""
    archive = folder.path / mf.LOGS_FILE
    if not archive.is_file():
        return 0
    token = uuid.uuid4().hex[:8]
    staging = logs.parent / f".{logs.name}.restoring-{token}"
    aside = logs.parent / f"{logs.name}.before-restore-{token}"
    try:
        logs.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_staging(logs)
        files.extract_logs(archive, staging)
        count = sum(1 for p in staging.rglob("*") if p.is_file())
        if logs.exists():
            os.replace(logs, aside)
        os.replace(staging, logs)
    except (OSError, ValueError) as exc:
        shutil.rmtree(staging, ignore_errors=True)
        kept = f"the previous compute logs are in {aside}" if aside.exists() else (
            f"the previous compute logs are still in {logs}")
        raise RestoreFailedError(
            f"the database was restored from {folder.name}, but its compute logs were not "
            f"({exc}); {kept}; unpack {archive} into {logs} by hand") from None
    if aside.exists():
        if safety or not _has_files(aside):
            shutil.rmtree(aside, ignore_errors=True)
        else:
            log.warning("previous compute logs kept in %s", aside)
    return count


def _remove_stale_staging(logs: Path) -> None:
    """Unpacked archives left by restores killed while swapping the logs in. The caller holds
    the backup lock, so no other restore is unpacking now: each one found is a leftover, and
    only ever a copy of a backup's archive (the live logs are renamed aside, never staged)."""
    for stale in logs.parent.glob(f".{logs.name}.restoring-*"):
        log.info("removing %s, left by an interrupted restore", stale)
        shutil.rmtree(stale, ignore_errors=True)


def _sync_catalog(conn, directory: Path, known: dict[str, catalog.BackupInfo]) -> None:
    """The restored catalog is the backup's copy. Put back what the catalog knew just before
    the restore (it is newer), add folders on disk it never knew, drop rows of deleted folders."""
    try:
        conn.autocommit = False
        with conn:
            if not catalog.has_catalog(conn):
                return
            restored = catalog.rows_by_name(conn)
            on_disk = {f.name: f for f in scan(directory) if f.manifest is not None}
            for name, folder in on_disk.items():
                if name in known:
                    catalog.put(conn, known[name], folder.manifest)
                elif name not in restored or restored[name].status != "ok":
                    catalog.record(conn, folder.manifest, folder.path)
            for name, row in known.items():
                if row.status != "ok" and name not in on_disk:
                    catalog.put(conn, row, None)  # failed attempts stay visible
            gone = [n for n, row in {**restored, **known}.items()
                    if n not in on_disk and row.path.parent == directory and row.status == "ok"]
            catalog.forget(conn, gone)
    except Exception as exc:  # noqa: BLE001  (the restore itself is complete)
        log.warning("the backup catalog could not be brought in step: %s", exc)


def _version_notes(manifest: dict[str, Any]) -> list[str]:
    """Refuse a backup whose Dagster schema the installed Dagster does not know (taken with a
    newer Dagster); note when the restored schema will be behind this Dagster's head."""
    from alembic.script import ScriptDirectory
    from alembic.util.exc import CommandError

    from dagpg.schema import dagster_alembic_config

    revision = (manifest.get("alembic") or {}).get("dagster")
    if not revision:
        return []
    script = ScriptDirectory.from_config(dagster_alembic_config())
    taken = manifest.get("dagster_version") or "another version"
    try:
        script.get_revision(revision)
    except CommandError:
        raise RestoreRefusedError(
            f"backup {manifest['name']} was taken with Dagster {taken}, whose schema revision "
            f"{revision} this Dagster does not know; install Dagster {taken} to restore it"
        ) from None
    head = script.get_current_head()
    if revision != head:
        return [f"the backup's Dagster schema ({revision}, Dagster {taken}) is behind this "
                f"Dagster's ({head}): run `dagpg db upgrade` before starting the services"]
    return []
