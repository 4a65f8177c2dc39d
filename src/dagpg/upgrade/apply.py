"""`dagpg upgrade --apply` and `--rollback`.

Apply, in an order where every failure leaves something the same command finishes from:
1. refuse while a daemon heart-beats (services must be stopped) unless forced;
2. a pre-upgrade backup (kind `pre-upgrade`, kept by retention until the next successful
   upgrade) and, beside it, upgrade.json with the inventory read before the migration;
3. Dagster's schema migration in one transaction (a failing revision changes nothing);
4. Dagster's data migrations and the kit's schema (`dagpg db upgrade`'s code);
5. the inventory again, through Dagster's APIs, and every table's rows against the manifest.
A failure in 4 or 5 restores the pre-upgrade backup's dump (one transaction): the database is
as it was. Killed after 3 committed, the database is at head and upgrade.json says `started`:
running `--apply` again does 4 and 5 against the inventory kept in upgrade.json.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dagpg import pg
from dagpg.backup import catalog, load, lock, tools
from dagpg.backup import manifest as mf
from dagpg.backup.create import create_backup
from dagpg.backup.errors import BackupError
from dagpg.backup.folders import Folder, backup_directory, locate
from dagpg.backup.restore import restore_backup
from dagpg.instance import Instance
from dagpg.progress import ProgressFn
from dagpg.settings import KitSettings
from dagpg.upgrade import guards, inventory, migration, record, revisions
from dagpg.upgrade.errors import (
    SchemaAheadError,
    UpgradeError,
    UpgradeFailedError,
    UpgradeRefusedError,
)
from dagpg.upgrade.rehearse import ahead_hint, current_revision, verify_after

log = logging.getLogger(__name__)



@dataclass
class ApplyReport:
    status: str  # upgraded | at head | resumed
    backup: str | None
    migration: migration.MigrationResult | None
    steps: list[revisions.Step] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    verify_s: float = 0.0
    backup_s: float = 0.0
    duration_s: float = 0.0
    before_versions: record.Versions | None = None
    next_steps: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status, "backup": self.backup,
            "migration": self.migration.as_dict() if self.migration else None,
            "steps": [s.as_dict() for s in self.steps], "counts": self.counts,
            "backup_s": round(self.backup_s, 3), "verify_s": round(self.verify_s, 3),
            "duration_s": round(self.duration_s, 3),
            "rollback_versions": self.before_versions.as_dict() if self.before_versions
            else None,
            "next_steps": self.next_steps,
        }


def apply_upgrade(
    instance: Instance,
    settings: KitSettings,
    *,
    directory: str | os.PathLike | None = None,
    force: bool = False,
    progress: ProgressFn | None = None,
) -> ApplyReport:
    """Upgrade the live instance's schemas to the installed Dagster's head, with a way back."""
    with guards.upgrade_lock(instance), pg.lost_connection(instance.target,
                                                          "applying the upgrade"):
        return _apply(instance, settings, backup_directory(settings, directory), force,
                      progress or (lambda _msg: None))


def _apply(instance: Instance, settings: KitSettings, folder_dir: Path, force: bool,
           say: ProgressFn) -> ApplyReport:
    started = time.monotonic()
    script = revisions.scripts()
    live = current_revision(instance)
    state = revisions.classify(live, script)
    if state == revisions.AHEAD:
        raise SchemaAheadError(live, record.installed_versions()["dagster"] or "?",
                               ahead_hint(folder_dir, live))
    if state == revisions.EMPTY:
        raise UpgradeRefusedError(
            f"{instance.target.url()} has no Dagster schema: nothing to upgrade; create it "
            "with `dagpg db upgrade` (or restore a backup)")
    guards.refuse_while_running(instance, settings, force=force, what="`dagpg upgrade --apply`")
    if state == revisions.AT_HEAD:
        return _finish_or_nothing(instance, folder_dir, started, say)

    for stale, rec in record.pre_upgrade_backups(folder_dir):
        if rec and rec.get("status") == record.STARTED:  # killed before its migration committed
            record.update(stale.path, status=record.FAILED,
                          error="interrupted before its schema migration committed")
    steps = revisions.steps(live, script)
    say("taking the pre-upgrade backup")
    try:
        backup = create_backup(instance, settings, directory=folder_dir, kind=record.PRE_UPGRADE,
                               suffix=record.PRE_UPGRADE, progress=say)
    except BackupError as exc:
        raise UpgradeFailedError(
            f"the pre-upgrade backup failed, so nothing was upgraded: {exc}") from None
    writer = record.writer_versions(folder_dir, live)
    with pg.connection(instance.target) as conn:
        before = inventory.from_sql(conn)
    record.write(backup.path, {
        "status": record.STARTED, "started_at": record.now(), "from_revision": live,
        "to_revision": script.get_current_head(),
        "from_versions": writer.as_dict() if writer else None,
        "to_versions": record.installed_versions(), "inventory": before.as_dict()})
    folder = locate(backup.name, folder_dir)

    say(f"migrating Dagster's schema in one transaction: {live} -> {script.get_current_head()}")
    try:
        result = migration.migrate_schema(instance)
    except migration.SchemaMigrationError as exc:
        record.update(backup.path, status=record.FAILED, error=str(exc))
        again = (f"; to go back to the Dagster that wrote it: {writer.pip_line()}"
                 if writer else "")
        raise UpgradeFailedError(
            f"{exc}, with all its data (pre-upgrade backup {backup.name} holds it too); fix "
            f"the cause and run `dagpg upgrade --apply` again{again}") from None
    report = ApplyReport(status="upgraded", backup=backup.name, migration=result, steps=steps,
                         backup_s=backup.duration_s, before_versions=writer)
    _finish(instance, folder, before, report, say)
    report.duration_s = time.monotonic() - started
    return report


def _finish_or_nothing(instance: Instance, folder_dir: Path, started: float,
                       say: ProgressFn) -> ApplyReport:
    """At head: finish an upgrade killed after its schema migration committed, else nothing."""
    newest = next(iter(record.pre_upgrade_backups(folder_dir)), None)
    pending = newest if newest and newest[1] and newest[1].get("status") == record.STARTED \
        else None
    if pending is None or pending[1].get("to_revision") != current_revision(instance):
        return ApplyReport(status="at head", backup=None, migration=None,
                           duration_s=time.monotonic() - started,
                           next_steps=["nothing to do: the schema is at the installed "
                                       "Dagster's head"])
    folder, rec = pending
    say(f"finishing the upgrade started with pre-upgrade backup {folder.name}")
    before = inventory.Inventory.from_dict(rec["inventory"])
    result = migration.MigrationResult(before=rec.get("from_revision"),
                                       after=rec.get("to_revision"))
    versions = rec.get("from_versions")
    report = ApplyReport(status="resumed", backup=folder.name, migration=result,
                         before_versions=record.Versions(versions["dagster"],
                                                         versions.get("dagster_postgres"),
                                                         versions["source"])
                         if versions else None)
    _finish(instance, folder, before, report, say)
    report.duration_s = time.monotonic() - started
    return report


def _finish(instance: Instance, folder: Folder, before: inventory.Inventory,
            report: ApplyReport, say: ProgressFn) -> None:
    """Data migrations and verification; any failure puts the pre-upgrade backup back."""
    try:
        say("running Dagster's data migrations and the kit's schema upgrade")
        migration.migrate_data(instance, report.migration)
        say("checking runs, events, assets, checks, schedules and ticks through Dagster")
        started = time.monotonic()
        differences = verify_after(instance, before, folder.manifest)
        report.verify_s = time.monotonic() - started
        if differences:
            raise UpgradeError("after the migration, " + inventory.summarize(differences))
    except Exception as exc:  # noqa: BLE001  (whatever failed, the way back is the same)
        reason = str(exc) if isinstance(exc, UpgradeError) else \
            f"{type(exc).__name__}: {_first_line(exc)}"
        say(f"the upgrade failed ({reason}); restoring pre-upgrade backup {folder.name}")
        _put_back(instance, folder, reason)
        raise UpgradeFailedError(
            f"the upgrade failed ({reason}) and pre-upgrade backup {folder.name} was restored: "
            f"the database is at {report.migration.before} with all its data as before; fix "
            "the cause and run `dagpg upgrade --apply` again") from None
    report.counts = before.counts()
    record.update(folder.path, status=record.APPLIED, applied_at=record.now(),
                  migration=report.migration.as_dict())
    report.next_steps = [
        "start the services (the daemon, then the webserver)",
        "run `dagpg verify`",
        "to go back: stop the services, `dagpg upgrade --rollback`"
        + (f", then {report.before_versions.pip_line()}" if report.before_versions else ""),
    ]


def _put_back(instance: Instance, folder: Folder, reason: str) -> None:
    """Load the pre-upgrade dump over the database (one transaction, counts checked)."""
    manifest = folder.manifest
    conn = pg.connect(instance.target, autocommit=True)
    try:
        lock.acquire(conn, instance.target.where)
        major = conn.server_version // 10000
        dump_major = int(manifest.get("pg_dump", {}).get("major") or 0)
        pg_restore = tools.program("pg_restore", max(major, dump_major))
        load.load_dump(instance.target, folder.path / mf.DUMP_FILE,
                       manifest.get("row_counts") or {}, pg_restore=pg_restore,
                       psql=tools.companion(pg_restore, "psql"))
    except BackupError as exc:
        raise UpgradeFailedError(
            f"the upgrade failed ({reason}) and putting pre-upgrade backup {folder.name} back "
            f"failed too ({exc}); stop here and run `dagpg restore {folder.name} --yes`"
        ) from None
    finally:
        conn.close()
    record.update(folder.path, status=record.FAILED, error=reason)
    _recatalog(instance, folder)


def _recatalog(instance: Instance, folder: Folder) -> None:
    """The dump's catalog predates its own backup: put the pre-upgrade backup's row back."""
    try:
        with pg.connection(instance.target) as conn:
            if catalog.has_catalog(conn):
                catalog.record(conn, folder.manifest, folder.path)
    except Exception as exc:  # noqa: BLE001
        log.warning("backup %s could not be catalogued again: %s", folder.name, exc)


# -- rollback -------------------------------------------------------------------------------------

@dataclass
class RollbackReport:
    backup: str
    revision: str | None
    safety_backup: str | None
    rows: int
    duration_s: float
    versions: record.Versions | None
    next_steps: list[str]
    kind: str = record.PRE_UPGRADE  # the restored backup's kind (--backup may name any)

    @property
    def restored(self) -> str:
        """'pre-upgrade backup NAME', or 'backup NAME' for another kind named by --backup."""
        return f"{'pre-upgrade ' if self.kind == record.PRE_UPGRADE else ''}backup {self.backup}"

    def as_dict(self) -> dict[str, Any]:
        return {"backup": self.backup, "kind": self.kind, "revision": self.revision,
                "safety_backup": self.safety_backup, "rows": self.rows,
                "duration_s": round(self.duration_s, 3),
                "versions": self.versions.as_dict() if self.versions else None,
                "pip_install": self.versions.pip_line() if self.versions else None,
                "next_steps": self.next_steps}


def rollback_upgrade(
    instance: Instance,
    settings: KitSettings,
    *,
    directory: str | os.PathLike | None = None,
    backup: str | None = None,
    force: bool = False,
    progress: ProgressFn | None = None,
) -> RollbackReport:
    """Restore the pre-upgrade backup of the last applied upgrade (or `backup`) and say which
    Dagster to reinstall."""
    folder_dir = backup_directory(settings, directory)
    if backup is not None:
        folder = locate(backup, folder_dir)
        rec = record.read(folder.path)
    else:
        applied = [(f, r) for f, r in record.pre_upgrade_backups(folder_dir)
                   if r and r.get("status") == record.APPLIED]
        if not applied:
            raise UpgradeRefusedError(
                f"no pre-upgrade backup of an applied upgrade in {folder_dir}: nothing to roll "
                "back (name one with --backup, or restore any backup with `dagpg restore`)")
        folder, rec = applied[0]
    revision = (folder.manifest.get("alembic") or {}).get("dagster")
    saved = (rec or {}).get("from_versions")
    versions = (record.Versions(saved["dagster"], saved.get("dagster_postgres"), saved["source"])
                if saved else record.writer_versions(folder_dir, revision))
    with guards.upgrade_lock(instance), pg.lost_connection(instance.target,
                                                          "rolling back the upgrade"):
        guards.refuse_while_running(instance, settings, force=force,
                                    what="`dagpg upgrade --rollback`")
        restored = restore_backup(instance, settings, folder.name, directory=folder_dir,
                                  force=True, progress=progress)
    if rec is not None:
        record.update(folder.path, status=record.ROLLED_BACK, rolled_back_at=record.now())
    steps = [f"reinstall the Dagster that wrote it ({versions.dagster}): the pip install line "
             "below" if versions else
             f"reinstall the Dagster whose schema head is {revision} (the one installed before "
             "the upgrade)",
             "start the services (the daemon, then the webserver)", "run `dagpg verify`"]
    return RollbackReport(backup=folder.name, revision=revision,
                          safety_backup=restored.safety_backup, rows=restored.rows,
                          duration_s=restored.duration_s, versions=versions, next_steps=steps,
                          kind=str(folder.manifest.get("kind") or ""))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
