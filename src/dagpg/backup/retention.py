"""`dagpg backups prune`: keep the newest backup of each of the last N days and M weeks (in the
schedule's timezone), and always the newest backup that verified; delete the rest.

Pre-upgrade backups (`dagpg upgrade --apply`) are kept until the next successful upgrade: the
newest one whose upgrade was applied (its way back) and any newer attempt.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from dagpg import pg
from dagpg.backup import catalog, files, lock
from dagpg.backup.folders import backup_directory, partials, scan
from dagpg.instance import Instance
from dagpg.settings import KitSettings

log = logging.getLogger(__name__)

UPGRADE_RECORD = "upgrade.json"  # written by dagpg.upgrade into its pre-upgrade backup folder


@dataclass(frozen=True)
class Candidate:
    name: str
    taken_at: datetime  # aware
    verified: bool
    pinned: str | None = None  # kept whatever the calendar says, and why


@dataclass(frozen=True)
class Plan:
    keep: dict[str, list[str]]  # name -> why it is kept
    delete: list[str]


def plan_retention(
    candidates: list[Candidate], *, keep_daily: int, keep_weekly: int, timezone: str = "UTC"
) -> Plan:
    """Which backups to keep and which to delete (a pure function: no disk, no database)."""
    zone = ZoneInfo(timezone)
    newest_first = sorted(candidates, key=lambda c: (c.taken_at, c.name), reverse=True)
    keep: dict[str, list[str]] = {}
    days: set = set()
    weeks: set = set()
    for c in newest_first:
        local = c.taken_at.astimezone(zone)
        day = local.date()
        week = local.isocalendar()[:2]
        if day not in days and len(days) < keep_daily:
            days.add(day)
            keep.setdefault(c.name, []).append(f"daily {day.isoformat()}")
        if week not in weeks and len(weeks) < keep_weekly:
            weeks.add(week)
            keep.setdefault(c.name, []).append(f"weekly {week[0]}-W{week[1]:02d}")
    for c in newest_first:
        if c.pinned:
            keep.setdefault(c.name, []).append(c.pinned)
    newest_verified = next((c for c in newest_first if c.verified), None)
    if newest_verified is not None:
        keep.setdefault(newest_verified.name, []).append("newest verified")
    delete = [c.name for c in reversed(newest_first) if c.name not in keep]
    return Plan(keep=keep, delete=delete)


@dataclass
class PruneReport:
    directory: Path
    dry_run: bool
    kept: dict[str, list[str]] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)
    leftovers_removed: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"directory": str(self.directory), "dry_run": self.dry_run,
                "kept": [{"name": n, "reasons": r} for n, r in sorted(self.kept.items())],
                "deleted": self.deleted, "leftovers_removed": self.leftovers_removed}


def prune_backups(
    instance: Instance,
    settings: KitSettings,
    *,
    directory: str | os.PathLike | None = None,
    dry_run: bool = False,
) -> PruneReport:
    """Apply dagpg.backup.keep_daily/keep_weekly to the backups folder (see plan_retention).
    Also removes leftovers of interrupted backups when no backup is running."""
    directory = backup_directory(settings, directory)
    report = PruneReport(directory=directory, dry_run=dry_run)
    folders = {f.name: f for f in scan(directory)}
    with pg.connection(instance.target) as conn:
        rows = catalog.rows_by_name(conn)
        pins = _upgrade_pins(folders.values())
        candidates = [
            Candidate(name, folder.taken_at, _verified(folder, rows.get(name)), pins.get(name))
            for name, folder in folders.items()
        ]
        backup = settings.backup
        plan = plan_retention(candidates, keep_daily=backup.keep_daily,
                              keep_weekly=backup.keep_weekly, timezone=backup.schedule.timezone)
        report.kept = plan.keep
        report.deleted = plan.delete
        if dry_run:
            return report
        for name in plan.delete:
            log.info("deleting backup %s (outside retention)", name)
            files.remove_tree(folders[name].path)
        if lock.is_free(conn):
            for leftover in partials(directory):
                log.info("removing %s, left by an interrupted backup", leftover)
                files.remove_tree(leftover)
                report.leftovers_removed.append(leftover.name)
        oldest_kept = min((folders[n].taken_at for n in plan.keep), default=None)
        stale = [n for n, row in rows.items()
                 if n in plan.delete or (row.status != "ok" and oldest_kept is not None
                                         and row.started_at < oldest_kept)]
        if catalog.has_catalog(conn):
            catalog.forget(conn, stale)
    return report


def _verified(folder, row: catalog.BackupInfo | None) -> bool:
    """The catalog's latest verdict; without one, the check every backup passed when written."""
    if folder.manifest is None:
        return False
    if row is not None and row.verify_status is not None:
        return row.verify_status == "ok"
    return bool((folder.manifest.get("verified") or {}).get("at"))


def _upgrade_pins(folders) -> dict[str, str]:
    """Pre-upgrade backups to keep: newest first, down to the newest whose upgrade applied."""
    pins = {}
    upgrades = [f for f in folders if (f.manifest or {}).get("kind") == "pre-upgrade"]
    for folder in sorted(upgrades, key=lambda f: (f.taken_at, f.name), reverse=True):
        try:
            state = json.loads((folder.path / UPGRADE_RECORD).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            state = {}
        applied = state.get("status") == "applied"
        pins[folder.name] = ("pre-upgrade (way back from the last upgrade)" if applied
                             else "pre-upgrade (until the next successful upgrade)")
        if applied:
            break
    return pins
