"""The nightly step, written once: back up, apply the backups' retention, then prune the history.

Dagster's `instance_backup_nightly` (group instance_ops) and the OS task that stands in for it on
a night the daemon is down (`dagpg nightly --backup-if-older-than 12`) both run `nightly_steps()`,
so both do the same, in the same order. The backup comes first because pruning cannot be undone:
the prune requires a verified backup younger than dagpg.verify.backup_max_age_h, and the one just
taken is. The history is pruned when dagpg.retention.nightly is true (the default).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from dagpg.backup import (
    BackupResult,
    BackupSkipped,
    PruneReport,
    backup_if_due,
    create_backup,
)
from dagpg.backup import prune_backups as apply_backup_retention
from dagpg.instance import Instance
from dagpg.progress import ProgressFn, reporter
from dagpg.prune import PruneInProgressError, prune_history
from dagpg.prune import PruneReport as HistoryReport
from dagpg.settings import KitSettings

BACKUP_STEP = "backup"
HISTORY_STEP = "history"


@dataclass
class Step:
    name: str  # BACKUP_STEP | HISTORY_STEP
    skipped: str | None = None  # why nothing was done
    backup: BackupResult | None = None
    backups_pruned: PruneReport | None = None
    history: HistoryReport | None = None

    @property
    def complete(self) -> bool:
        return self.history.complete if self.history is not None else True

    def metadata(self) -> dict[str, Any]:
        """Plain values for a Dagster materialization (and the JSON report)."""
        if self.name == BACKUP_STEP:
            out: dict[str, Any] = {"skipped": self.skipped or ""}
            if self.backup is not None:
                out.update({
                    "backup": self.backup.name, "path": str(self.backup.path),
                    "size_bytes": self.backup.size_bytes,
                    "duration_s": round(self.backup.duration_s, 3),
                    "dump_sha256": self.backup.dump_sha256,
                    "runs": self.backup.row_counts.get("runs", 0),
                    "event_logs": self.backup.row_counts.get("event_logs", 0)})
            if self.backups_pruned is not None:
                out["pruned"] = len(self.backups_pruned.deleted)
            return out
        out = {"skipped": self.skipped or ""}
        if self.history is not None:
            h = self.history
            out.update({
                "runs_deleted": h.runs_deleted, "runs_logs_pruned": h.runs_logs_pruned,
                "runs_kept_for_catalog": len(h.plan.kept_for_catalog),
                "events_deleted": h.events_total, "estimated_bytes": h.estimated_bytes,
                "bytes_reclaimed": h.bytes_reclaimed,
                "compute_log_folders_deleted": h.log_files.folders_deleted if h.log_files else 0,
                "transactions": h.transactions, "duration_s": round(h.duration_s, 3),
                "complete": h.complete})
        return out

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"step": self.name, "skipped": self.skipped}
        if self.backup is not None:
            out["backup"] = self.backup.as_dict()
        if self.backups_pruned is not None:
            out["backups_pruned"] = self.backups_pruned.as_dict()
        if self.history is not None:
            out["history"] = self.history.as_dict()
        return out


@dataclass
class NightlyReport:
    steps: list[Step] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def complete(self) -> bool:
        return all(s.complete for s in self.steps)

    def as_dict(self) -> dict[str, Any]:
        return {"complete": self.complete, "duration_s": round(self.duration_s, 3),
                "steps": [s.as_dict() for s in self.steps]}


def nightly_steps(
    instance: Instance,
    settings: KitSettings,
    *,
    backup_if_older_than_h: float | None = None,
    kind: str = "nightly",
    progress: ProgressFn | None = None,
) -> Iterator[Step]:
    """Run the nightly steps in order, yielding each when it is done (a Dagster asset
    materializes each as it comes). With `backup_if_older_than_h`, the backup is skipped when
    one younger than that exists (Dagster's schedule took it) or one is running. Errors of
    either step raise (DagpgError) after the steps before it were yielded."""
    say = reporter(progress)
    step = Step(BACKUP_STEP)
    if backup_if_older_than_h is None:
        result = create_backup(instance, settings, kind=kind, progress=say)
    else:
        result = backup_if_due(instance, settings, older_than_h=backup_if_older_than_h,
                               kind=kind, progress=say)
    if isinstance(result, BackupSkipped):
        step.skipped = result.reason
        say(f"backup skipped: {result.reason}")
    else:
        step.backup = result
    step.backups_pruned = apply_backup_retention(instance, settings)
    yield step

    step = Step(HISTORY_STEP)
    if not settings.retention.nightly:
        step.skipped = "dagpg.retention.nightly is false"
    else:
        try:
            step.history = prune_history(instance, settings, progress=say)
        except PruneInProgressError as exc:
            step.skipped = str(exc)  # the other one does the same work
    if step.skipped:
        say(f"history prune skipped: {step.skipped}")
    yield step


def run_nightly(instance: Instance, settings: KitSettings, **options) -> NightlyReport:
    """All of `nightly_steps()`, for the CLI and the OS task."""
    started = time.monotonic()
    report = NightlyReport()
    try:
        for step in nightly_steps(instance, settings, **options):
            report.steps.append(step)
    finally:
        report.duration_s = time.monotonic() - started
    return report
