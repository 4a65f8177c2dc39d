"""The outcome of one prune (or of a dry run): what went, what stayed and why, sizes, time."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from dagpg.prune.logfiles import LogFiles
from dagpg.prune.plan import Plan
from dagpg.prune.policy import Policy


@dataclass
class PruneReport:
    policy: Policy
    dry_run: bool
    plan: Plan = field(default_factory=Plan)
    backup: dict[str, Any] | None = None  # the backup that is the undo, or {"forced": True}
    events_deleted: Counter = field(default_factory=Counter)  # type -> rows (would be, dry run)
    event_bytes: int = 0  # dry run: stored size of those events' payloads (pg_column_size)
    rows_deleted: Counter = field(default_factory=Counter)  # other tables -> rows
    slots_freed: int = 0
    transactions: int = 0
    runs_logs_pruned: int = 0  # runs that lost bulky events (would, dry run); not again
    runs_deleted: int = 0
    log_files: LogFiles | None = None
    sizes_before: dict[str, int] = field(default_factory=dict)  # table -> bytes on disk
    sizes_after: dict[str, int] = field(default_factory=dict)
    estimated_bytes: int = 0  # table bytes the deleted rows took (average row size x rows)
    vacuumed: list[str] = field(default_factory=list)
    duration_s: float = 0.0
    complete: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def events_total(self) -> int:
        return sum(self.events_deleted.values())

    @property
    def bytes_reclaimed(self) -> int:
        """Table bytes on disk before minus after (VACUUM without FULL hands little back to the
        file system: the freed space is reused by new rows). Never below 0: VACUUM's first visit
        of a small table adds its free space and visibility maps, which reclaims nothing."""
        return max(0, sum(self.sizes_before.get(t, 0) - self.sizes_after.get(t, 0)
                          for t in self.sizes_after))

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "dry_run": self.dry_run,
            "complete": self.complete,
            "policy": self.policy.as_dict(),
            "backup": self.backup,
            **self.plan.as_dict(),
            "runs_logs_pruned": self.runs_logs_pruned,
            "runs_deleted": self.runs_deleted,
            "events_deleted": dict(sorted(self.events_deleted.items())),
            "events_deleted_total": self.events_total,
            "rows_deleted": dict(sorted(self.rows_deleted.items())),
            "concurrency_slots_freed": self.slots_freed,
            "transactions": self.transactions,
            "compute_logs": self.log_files.as_dict() if self.log_files else None,
            "tables": {t: {"bytes_before": self.sizes_before.get(t),
                           "bytes_after": self.sizes_after.get(t)}
                       for t in sorted(self.sizes_before)},
            "bytes_reclaimed": self.bytes_reclaimed if self.sizes_after else None,
            "vacuumed": self.vacuumed,
            "duration_s": round(self.duration_s, 3),
            "notes": self.notes,
        }
        out["estimated_bytes"] = self.estimated_bytes
        if self.dry_run:
            out["event_payload_bytes"] = self.event_bytes
        return out
