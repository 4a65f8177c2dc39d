"""`dagpg upgrade --rehearse`: the upgrade on a copy, timed and verified; the live instance is
only read (its catalog and revision), never written."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dagpg import pg
from dagpg.backup import load, tools
from dagpg.backup import manifest as mf
from dagpg.backup.errors import BackupError
from dagpg.backup.folders import backup_directory
from dagpg.instance import Instance
from dagpg.progress import ProgressFn
from dagpg.settings import KitSettings
from dagpg.upgrade import guards, inventory, migration, record, revisions
from dagpg.upgrade.errors import SchemaAheadError, UpgradeFailedError
from dagpg.upgrade.scratch import drop_leftovers, scratch_instance

log = logging.getLogger(__name__)



@dataclass
class RehearsalReport:
    backup: str
    backup_taken_at: str | None
    backup_dagster: str | None
    live_revision: str | None
    head: str
    steps: list[revisions.Step]
    migration: migration.MigrationResult | None = None
    restore_s: float = 0.0
    verify_s: float = 0.0
    backup_s: float = 0.0  # how long the pre-upgrade backup will take (the last one's time)
    duration_s: float = 0.0  # the whole rehearsal, the scratch database's creation and drop too
    counts: dict[str, int] = field(default_factory=dict)
    differences: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences

    @property
    def changed(self) -> bool:
        return bool(self.migration and self.migration.before != self.migration.after)

    @property
    def estimate_s(self) -> float:
        """What `--apply` will take: a backup, the migration, the verification."""
        return self.backup_s + (self.migration.duration_s if self.migration else 0) + \
            self.verify_s

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "backup": self.backup, "backup_taken_at": self.backup_taken_at,
            "backup_dagster": self.backup_dagster, "live_revision": self.live_revision,
            "head": self.head, "changed": self.changed,
            "steps": [s.as_dict() for s in self.steps],
            "migration": self.migration.as_dict() if self.migration else None,
            "restore_s": round(self.restore_s, 3), "verify_s": round(self.verify_s, 3),
            "backup_s": round(self.backup_s, 3), "estimate_s": round(self.estimate_s, 3),
            "duration_s": round(self.duration_s, 3),
            "counts": self.counts, "differences": self.differences, "notes": self.notes,
        }


def rehearse_upgrade(
    instance: Instance,
    settings: KitSettings,
    *,
    directory: str | os.PathLike | None = None,
    progress: ProgressFn | None = None,
) -> RehearsalReport:
    """Restore the newest verified backup into a scratch database, migrate it to the installed
    Dagster's head (timed), check through Dagster's APIs that the history survived, drop it."""
    with guards.upgrade_lock(instance), pg.lost_connection(instance.target,
                                                          "rehearsing the upgrade"):
        drop_leftovers(instance)
        return _rehearse(instance, settings, directory, progress or (lambda _msg: None))


def _rehearse(instance: Instance, settings: KitSettings, directory, say: ProgressFn
              ) -> RehearsalReport:
    rehearsal_started = time.monotonic()
    folder_dir = backup_directory(settings, directory)
    script = revisions.scripts()
    head = script.get_current_head()
    live = current_revision(instance)
    if revisions.classify(live, script) == revisions.AHEAD:
        raise SchemaAheadError(live, record.installed_versions()["dagster"] or "?",
                               ahead_hint(folder_dir, live))
    folder = guards.newest_verified_backup(instance, folder_dir, "the rehearsal")
    manifest = folder.manifest
    taken = (manifest.get("alembic") or {}).get("dagster")
    if revisions.classify(taken, script) == revisions.AHEAD:
        raise SchemaAheadError(taken, record.installed_versions()["dagster"] or "?",
                               f"backup {folder.name} cannot be rehearsed with this Dagster")
    report = RehearsalReport(
        backup=folder.name, backup_taken_at=manifest.get("started_at"),
        backup_dagster=manifest.get("dagster_version"), live_revision=live, head=head,
        steps=revisions.steps(taken, script), backup_s=float(manifest.get("duration_s") or 0))
    if taken != live:
        report.notes.append(
            f"backup {folder.name} is at Dagster revision {taken or 'nothing'} but the live "
            f"database is at {live or 'nothing'}: take a backup (`dagpg backup`) and rehearse "
            "again to rehearse the live schema")

    with scratch_instance(instance) as scratch:
        say(f"restoring backup {folder.name} into scratch database {scratch.target.database}")
        started = time.monotonic()
        restore_into(scratch, folder.path, manifest, progress=say)
        report.restore_s = time.monotonic() - started
        with pg.connection(scratch.target) as conn:
            before = inventory.from_sql(conn)
        say(f"migrating the copy: {taken or 'nothing'} -> {head}")
        report.migration = migration.migrate_schema(scratch)
        migration.migrate_data(scratch, report.migration)
        say("checking runs, events, assets, checks, schedules and ticks through Dagster")
        started = time.monotonic()
        report.differences = verify_after(scratch, before, manifest)
        report.verify_s = time.monotonic() - started
        report.counts = before.counts()
        say(f"dropping scratch database {scratch.target.database}")
    report.duration_s = time.monotonic() - rehearsal_started
    return report


def current_revision(instance: Instance) -> str | None:
    with pg.connection(instance.target) as conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass('public.alembic_version') IS NOT NULL")
        if not cur.fetchone()[0]:
            return None
        cur.execute("SELECT max(version_num) FROM alembic_version")
        return cur.fetchone()[0]


def restore_into(scratch: Instance, folder: Path, manifest: dict[str, Any],
                 progress: ProgressFn | None = None) -> None:
    """Load a backup's dump into the (empty) scratch database, all or nothing, row counts
    checked against the manifest (the restore library's loader)."""
    with pg.connection(scratch.target) as conn:
        major = conn.server_version // 10000
    dump_major = int(manifest.get("pg_dump", {}).get("major") or 0)
    pg_restore = tools.program("pg_restore", max(major, dump_major))
    psql = tools.companion(pg_restore, "psql")
    try:
        load.load_dump(scratch.target, folder / mf.DUMP_FILE, manifest.get("row_counts") or {},
                       pg_restore=pg_restore, psql=psql, progress=progress)
    except BackupError as exc:
        raise UpgradeFailedError(
            f"backup {folder.name} could not be restored into the scratch database ({exc}); "
            "nothing else was changed; verify it (`dagpg backups verify "
            f"{folder.name} --restore-test`) or take a new one") from None


# Tables that may gain rows: Dagster's data migrations mark themselves done, Dagster creates the
# instance id on first read, the kit catalogues the pre-upgrade backup. All others must keep
# exactly the rows the backup's manifest counted.
_BOOKKEEPING = {"secondary_indexes", "kvs", "instance_info", "alembic_version",
                "dagpg.alembic_version", "dagpg.backups"}


def verify_after(instance: Instance, before: inventory.Inventory, manifest: dict[str, Any]
                 ) -> list[str]:
    """Differences after the migration: the inventory through Dagster's APIs against `before`,
    and every table's row count against the backup's manifest."""
    from dagpg.migrate.dagster_views import target_instance

    with target_instance(instance) as dagster:
        after = inventory.from_dagster(dagster, before, home=instance.home)
    differences = inventory.compare(before, after)
    with pg.connection(instance.target) as conn, conn.cursor() as cur:
        counts = mf.row_counts(cur)
    for table, rows in sorted((manifest.get("row_counts") or {}).items()):
        found = counts.get(table)
        if found is None:
            differences.append(f"table {table}: missing after the upgrade ({rows} rows before)")
        elif found != rows and not (table in _BOOKKEEPING and found >= rows):
            differences.append(f"table {table}: {rows} rows before, {found} after")
    return differences


def ahead_hint(directory: Path, revision: str | None) -> str:
    """What to do about a schema a newer Dagster wrote: reinstall the version a backup of it
    records."""
    versions = record.writer_versions(directory, revision)
    if versions is None:
        return ("reinstall the Dagster that wrote it (the dagster_version in the manifest.json "
                "of a backup taken since: `dagpg backups list`)")
    return f"reinstall it: {versions.pip_line()} (recorded by backup {versions.source})"
