"""Which runs a prune touches, and which it must not: read from the database, nothing written.

What Dagster's catalog reads, and so what is never deleted (Dagster 1.13,
dagster/_core/storage/event_log/sql_event_log.py and partition_status_cache.py):

- the newest event of each kind (materialization, observation, materialization planned, failed
  to materialize, ...) of each asset and partition: the latest materialization and observation,
  materialized partitions (read from event_logs) and failed partitions (the newest planned event
  without a materialization after it, in a run that failed: that run must exist too);
- the event asset_keys.last_materialization points at, and the run in asset_keys.last_run_id;
- the newest check execution of each check and partition, its run (a planned execution's status
  is resolved from its run) and the events it points at, and the newest completed one (asset
  health shows it while the newest is running or skipped); any check execution that stays points
  at events that stay (asset_check_executions holds two event ids, with no foreign keys).

A run holding any of these is kept (in its logs-pruned form) instead of deleted. Runs that are
not finished, runs of a backfill still in progress and the newest `keep_last_runs` of each job
are not touched at all.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from dagpg.prune import events
from dagpg.prune.policy import Policy

log = logging.getLogger(__name__)


@dataclass
class Plan:
    logs_runs: list[str] = field(default_factory=list)  # their bulky events go (oldest first)
    # (runs deleted whole are not in logs_runs)
    delete_runs: list[str] = field(default_factory=list)  # deleted whole (oldest first)
    kept_for_catalog: dict[str, str] = field(default_factory=dict)  # run id -> why
    protected: Counter = field(default_factory=Counter)  # why -> old runs left alone

    def as_dict(self, sample: int = 20) -> dict[str, Any]:
        kept = sorted(self.kept_for_catalog.items())
        return {
            "runs_kept_for_catalog": len(kept),
            "kept_for_catalog_sample": [{"run_id": r, "why": w} for r, w in kept[:sample]],
            "protected": dict(self.protected),
        }


def make_plan(conn, policy: Policy) -> Plan:
    """The runs each tier touches, oldest first. Reads only."""
    plan = Plan()
    oldest = policy.oldest_cutoff
    if oldest is None:
        return plan
    logs_before = _naive(policy.logs_before)
    runs_before = _naive(policy.runs_before)
    with conn.cursor() as cur:
        rows = _candidates(cur, policy)
        deletable: list[str] = []
        logs: list[str] = []
        for run_id, status, updated, keep_last, in_backfill in rows:
            if status not in events.FINISHED_STATUSES:
                plan.protected["not finished"] += 1
            elif in_backfill:
                plan.protected["backfill in progress"] += 1
            elif keep_last:
                plan.protected["newest of its job"] += 1
            elif runs_before is not None and updated < runs_before:
                deletable.append(run_id)
            elif logs_before is not None and updated < logs_before:
                logs.append(run_id)
        if deletable:
            needed = needed_runs(cur, set(deletable))
            plan.kept_for_catalog = {r: needed[r] for r in deletable if r in needed}
        plan.delete_runs = [r for r in deletable if r not in plan.kept_for_catalog]
        # A run kept for the catalog is still past the runs cutoff: it keeps only what the logs
        # tier keeps.
        keep_logs = set(plan.kept_for_catalog) | set(logs)
        plan.logs_runs = [r for r, *_ in rows if r in keep_logs]
    return plan


def _candidates(cur, policy: Policy) -> list[tuple]:
    """(run_id, status, update_timestamp, keep_last, in_backfill) of every run updated before the
    oldest cutoff, oldest first."""
    cur.execute("SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema()"
                " AND table_name = 'runs' AND column_name = 'backfill_id'")
    by_column = "r.backfill_id = ANY(o.keys) OR " if cur.fetchone() else ""
    # by_column is one of two constants
    query = (
        "WITH ranked AS (SELECT run_id, row_number() OVER (PARTITION BY pipeline_name "  # noqa: S608
        "ORDER BY id DESC) AS rn FROM runs), "
        "open_backfills AS (SELECT coalesce(array_agg(key), '{}') AS keys FROM bulk_actions "
        "WHERE status <> ALL(%(done)s)) "
        "SELECT r.run_id, r.status, r.update_timestamp, k.rn <= %(keep)s, "
        f"({by_column}EXISTS (SELECT 1 FROM run_tags t WHERE t.run_id = r.run_id "
        "AND t.key = 'dagster/backfill' AND t.value = ANY(o.keys))) "
        "FROM runs r JOIN ranked k ON k.run_id = r.run_id CROSS JOIN open_backfills o "
        "WHERE r.update_timestamp < %(cutoff)s ORDER BY r.id")
    cur.execute(
        query,
        {"done": list(events.BACKFILL_DONE_STATUSES), "keep": policy.keep_last_runs,
         "cutoff": _naive(policy.oldest_cutoff)})
    return cur.fetchall()


def needed_runs(cur, deletable: set[str]) -> dict[str, str]:
    """Of `deletable`, the runs the asset catalog still needs, with the first reason found."""
    needed: dict[str, str] = {}

    def need(run_id: str | None, why: str) -> None:
        if run_id in deletable and run_id not in needed:
            needed[run_id] = why

    cur.execute(
        "SELECT e.run_id, e.dagster_event_type, e.asset_key, e.partition FROM event_logs e "
        "JOIN (SELECT max(id) AS id FROM event_logs WHERE asset_key IS NOT NULL "
        "GROUP BY asset_key, dagster_event_type, partition) m ON m.id = e.id "
        "ORDER BY e.id DESC")  # a run's reason: its newest such event
    for run_id, kind, asset_key, partition in cur.fetchall():
        where = f" partition {partition}" if partition is not None else ""
        need(run_id, f"newest {kind} of {_key(asset_key)}{where}")

    cur.execute("SELECT asset_key, last_materialization, last_run_id FROM asset_keys")
    pointed: dict[int, str] = {}
    for asset_key, last_materialization, last_run_id in cur.fetchall():
        need(last_run_id, f"last run of {_key(asset_key)}")
        storage_id = _storage_id(last_materialization)
        if storage_id is not None:
            pointed[storage_id] = _key(asset_key)
    if pointed:
        cur.execute("SELECT id, run_id FROM event_logs WHERE id = ANY(%s)", (list(pointed),))
        for storage_id, run_id in cur.fetchall():
            need(run_id, f"last materialization of {pointed[storage_id]}")

    # The newest completed one too: while the newest is planned (running, or skipped), asset
    # health shows the newest completed (AssetCheckSummaryRecord.last_completed_...).
    cur.execute(
        "SELECT c.run_id, c.asset_key, c.check_name, m.completed FROM asset_check_executions c "
        "JOIN (SELECT max(id) AS id, '' AS completed FROM asset_check_executions "
        "GROUP BY asset_key, check_name, partition UNION ALL "
        "SELECT max(id), 'completed ' FROM asset_check_executions "
        "WHERE execution_status = ANY(%s) GROUP BY asset_key, check_name, partition) m "
        "ON m.id = c.id ORDER BY m.completed", (list(events.COMPLETED_CHECK_STATUSES),))
    for run_id, asset_key, check_name, completed in cur.fetchall():
        need(run_id, f"newest {completed}execution of check {_key(asset_key)}:{check_name}")

    # Check executions that stay must not point at events that go: keep those events' runs,
    # whose own check executions then stay too, until nothing changes. One query finds every
    # reference into a deletable run from a check execution of another run.
    cur.execute(
        "SELECT DISTINCT coalesce(c.run_id, ''), e.run_id FROM asset_check_executions c "
        "JOIN event_logs e "
        "ON e.id IN (c.evaluation_event_storage_id, c.materialization_event_storage_id) "
        "JOIN unnest(%s::text[]) AS g(run_id) ON g.run_id = e.run_id "
        "WHERE coalesce(c.run_id, '') <> e.run_id", (sorted(deletable),))
    references = cur.fetchall()
    while True:
        found = {target for source, target in references
                 if target not in needed and (source in needed or source not in deletable)}
        if not found:
            break
        for run_id in sorted(found):
            need(run_id, "an event of it is referenced by a check execution that stays")
    return needed


def _storage_id(serialized: str | None) -> int | None:
    """The storage id inside asset_keys.last_materialization (a serialized EventLogRecord)."""
    if not serialized:
        return None
    try:
        value = json.loads(serialized)
    except ValueError:
        return None
    storage_id = value.get("storage_id") if isinstance(value, dict) else None
    return storage_id if isinstance(storage_id, int) else None


def _key(asset_key: str | None) -> str:
    """A stored asset key (JSON list, e.g. ["raw", "parcels"]) as Dagster shows it: raw/parcels."""
    try:
        parts = json.loads(asset_key or "")
    except ValueError:
        return str(asset_key)
    return "/".join(map(str, parts)) if isinstance(parts, list) else str(asset_key)


def _naive(moment):
    """Dagster stores run timestamps as naive UTC."""
    return moment.replace(tzinfo=None) if moment is not None else None
