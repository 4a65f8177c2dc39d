"""Retention of the run history: `dagpg prune` (and the nightly step), `dagpg stats`.

Dagster OSS keeps every run and event forever. `prune_history()` deletes the bulky events of old
finished runs (logs tier) and old runs whole (runs tier), keeping everything Dagster's asset
catalog reads, in bounded transactions on a live instance. `history_stats()` reports what the
history holds, how fast it grows and how long the disk lasts.
"""

from dagpg.prune.errors import (
    AgeError,
    NoRecentBackupError,
    PruneError,
    PruneIncompleteError,
    PruneInProgressError,
)
from dagpg.prune.plan import Plan, make_plan
from dagpg.prune.policy import Policy, make_policy
from dagpg.prune.report import PruneReport
from dagpg.prune.run import backup_gate, prune_history
from dagpg.prune.stats import StatsReport, history_stats

__all__ = [
    "AgeError", "NoRecentBackupError", "Plan", "Policy", "PruneError", "PruneInProgressError",
    "PruneIncompleteError", "PruneReport", "backup_gate", "make_plan", "make_policy",
    "StatsReport", "history_stats", "prune_history",
]
