"""Checks made before anything changes: services stopped, a verified backup at hand."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

from dagpg import pg
from dagpg.backup import catalog
from dagpg.backup import manifest as mf
from dagpg.backup.folders import Folder, scan
from dagpg.errors import DatabaseError
from dagpg.heartbeats import still_running
from dagpg.instance import Instance, PgTarget
from dagpg.settings import KitSettings
from dagpg.upgrade.errors import (
    NewestBackupCorruptError,
    NoVerifiedBackupError,
    ServicesRunningError,
    UpgradeRefusedError,
)

log = logging.getLogger(__name__)


def refuse_while_running(instance: Instance, settings: KitSettings, *, force: bool,
                         what: str) -> None:
    """ServicesRunningError when any daemon heartbeat is younger than the verify threshold."""
    limit = settings.verify.heartbeat_max_age_s
    with pg.connection(instance.target) as conn:
        beat = still_running(conn, limit)
    if beat is None:
        return
    if force:
        log.warning("going on while the daemon heart-beats (--force)")
        return
    services = f"{settings.services.daemon}, {settings.services.webserver}"
    raise ServicesRunningError(beat, limit, services, what)


def newest_verified_backup(instance: Instance, directory: Path, what: str) -> Folder:
    """The newest backup of this instance's database in `directory` whose latest verification
    passed (the catalog's verdict, else the check every backup passes when written), with its
    files intact. Backups of other databases in the same folder do not count: rehearsing or
    moving on another instance's backup would prove nothing about this one."""
    rows = {}
    try:
        with pg.connection(instance.target) as conn:
            rows = catalog.rows_by_name(conn)
    except DatabaseError as exc:
        log.info("the backup catalog could not be read (%s); using the manifests", exc)
    others = []
    for folder in reversed(scan(directory)):
        if folder.manifest is None:
            continue
        taken = of_database(folder.manifest)
        if taken is not None and taken.identity()[:3] != instance.target.identity()[:3]:
            others.append(taken.where)  # a shared backups folder: another instance's backup
            continue
        row = rows.get(folder.name)
        if row is not None and row.verify_status is not None:
            verified = row.verify_status == "ok"
        else:
            verified = bool((folder.manifest.get("verified") or {}).get("at"))
        if not verified:
            continue
        problems = mf.check_files(folder.path, folder.manifest)
        if problems:
            raise NewestBackupCorruptError(folder.name, problems[0], what)
        return folder
    raise NoVerifiedBackupError(str(directory), what, instance.target.where,
                                others[0] if others else None)


def of_database(manifest: dict) -> PgTarget | None:
    """The database a backup was taken of (host, port, database, user), from its manifest;
    None when the manifest does not say."""
    taken = manifest.get("instance") or {}
    try:
        return PgTarget(host=str(taken["host"]), port=int(taken["port"]),
                        database=str(taken["database"]), user=str(taken.get("user", "")))
    except (KeyError, TypeError, ValueError):
        return None


UPGRADE_LOCK = 7_160_017  # beside backup/lock.py's 7_160_005: one upgrade or move at a time


@contextlib.contextmanager
def upgrade_lock(instance: Instance) -> Iterator[None]:
    """Hold a session-level advisory lock for the whole operation."""
    conn = pg.connect(instance.target, autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_try_advisory_lock(%s)", (UPGRADE_LOCK,))
            if not cur.fetchone()[0]:
                raise UpgradeRefusedError(
                    f"another dagpg upgrade or move of {instance.target.where} is running (its "
                    "advisory lock is held); wait for it to finish and run the command again")
        yield
    finally:
        conn.close()
