"""Which tables carry history, where each lives in the SQLite layout, and how rows change.

Ids are kept for every table but event_logs (see idmap.py). References to event storage ids
are rewritten: asset_keys' records, asset_event_tags.event_id, asset_check_executions' event
ids and events, sensor cursors in instigators/jobs/job_ticks, kvs cursors. Rows PostgreSQL would
refuse (foreign keys SQLite never enforced) are filtered in SQLite and reported.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

from dagpg.dbtables import has_table
from dagpg.migrate import cursors
from dagpg.migrate.idmap import EventPlan
from dagpg.migrate.report import Warnings

RUNS, INDEX, SCHEDULES = "runs", "index", "schedules"


@dataclass(frozen=True)
class TableSpec:
    name: str
    file: str
    where: str = ""                               # keep only rows PostgreSQL can hold
    orphans: str = ""                             # what the dropped rows are, for the warning
    expressions: dict[str, str] = field(default_factory=dict)  # column -> SQL in SQLite
    nulled: tuple[str, str, str] = ("", "", "")   # (column, condition, what) nulled, reported
    replace: bool = False                         # the source's rows replace the target's


_SNAPSHOT_KNOWN = ("runs.snapshot_id IS NULL OR EXISTS (SELECT 1 FROM snapshots s "
                   "WHERE s.snapshot_id = runs.snapshot_id)")

TABLES: list[TableSpec] = [
    TableSpec("snapshots", RUNS),
    TableSpec("runs", RUNS,
              expressions={"snapshot_id": f"CASE WHEN {_SNAPSHOT_KNOWN} THEN snapshot_id END"},
              nulled=("snapshot_id", f"NOT ({_SNAPSHOT_KNOWN})",
                      "runs whose job snapshot is missing: kept, without the snapshot link")),
    TableSpec("run_tags", RUNS,
              where="EXISTS (SELECT 1 FROM runs r WHERE r.run_id = run_tags.run_id)",
              orphans="tags of runs that no longer exist (deleted runs leave them in SQLite)"),
    TableSpec("bulk_actions", RUNS),
    TableSpec("backfill_tags", RUNS),
    TableSpec("kvs", RUNS),
    TableSpec("instance_info", RUNS, replace=True),
    TableSpec("asset_keys", INDEX),
    TableSpec("asset_event_tags", INDEX),
    TableSpec("asset_check_executions", INDEX),
    TableSpec("dynamic_partitions", INDEX),
    TableSpec("concurrency_limits", INDEX),
    TableSpec("concurrency_slots", INDEX),
    TableSpec("pending_steps", INDEX),
    TableSpec("jobs", SCHEDULES),
    TableSpec("instigators", SCHEDULES),
    TableSpec("job_ticks", SCHEDULES),
    TableSpec("asset_daemon_asset_evaluations", SCHEDULES),
]

SKIPPED = {
    "daemon_heartbeats": "the old services' liveness, not history",
    "secondary_indexes": "Dagster records its own when it creates the target schema",
    "alembic_version": "Dagster stamps the target schema itself",
    "index.db event_logs": "copies of events that are copied from the run shards",
}

Row = dict[str, object]


class Transforms:
    """Per-table row rewrites. A transform returns the row, or None to drop it (reported)."""

    def __init__(self, plan: EventPlan, warnings: Warnings, sensor_types: dict[str, str]):
        self.plan = plan
        self.warnings = warnings
        self.sensor_types = sensor_types  # instigator origin id or selector id -> SensorType
        self.table = ""  # the table being copied, for the warnings about its pointers
        self.ids = cursors.IdMap(cursor=plan.floor, event=self._event)
        self.by_table: dict[str, Callable[[Row], Row | None]] = {
            "asset_keys": self.asset_keys,
            "asset_event_tags": self.asset_event_tags,
            "asset_check_executions": self.asset_check_executions,
            "jobs": self.jobs,
            "instigators": self.instigators,
            "job_ticks": self.job_ticks,
            "kvs": self.kvs,
        }

    def _event(self, index_id: int, ref: cursors.EventRef | None) -> int:
        new = self.plan.event_id(index_id, ref)
        if new == cursors.NO_EVENT and index_id > 0:
            self.warnings.add("orphan", self.table, "pointers to events that exist nowhere "
                              "(their run was deleted): they point at none (0), as in SQLite",
                              index_id)
        return new

    def serialized(self, table: str, column: str, text):
        self.table = table
        try:
            return cursors.remap_serialized(text, self.ids)
        except (ValueError, cursors.Unreadable) as exc:
            self.warnings.add("cursor", table, f"{column} kept unchanged: cannot rewrite its "
                              "storage ids", exc)
            return text

    def asset_keys(self, row: Row) -> Row | None:
        row["last_materialization"] = self.serialized("asset_keys", "last_materialization",
                                                      row.get("last_materialization"))
        row["cached_status_data"] = self.serialized("asset_keys", "cached_status_data",
                                                    row.get("cached_status_data"))
        return row

    def asset_event_tags(self, row: Row) -> Row | None:
        event_id = row.get("event_id")
        new = self.plan.exact(event_id) if isinstance(event_id, int) else None
        if new is None:  # the index copy is gone (a wiped asset); the shard row is not
            new = self.plan.loose(row.get("asset_key"), row.get("event_timestamp"))
        if new is None:
            self.warnings.add("orphan", "asset_event_tags",
                              "tags of events that no longer exist: dropped", event_id)
            return None
        row["event_id"] = new
        return row

    def asset_check_executions(self, row: Row) -> Row | None:
        """Both storage ids are pointers: to the evaluation event, to the materialization it
        evaluated. Either's index row may be gone; the evaluation event (copied from its run's
        shard) says where to find both."""
        self.table = "asset_check_executions"
        entry = _json(row.get("evaluation_event"))
        event = (entry.get("dagster_event") or {}) if entry else {}
        data = event.get("event_specific_data") if isinstance(event, dict) else None
        target = (data or {}).get("target_materialization_data") if isinstance(data, dict) \
            else None
        asset_key = row.get("asset_key")
        refs = {
            "evaluation_event_storage_id": cursors.EventRef(
                (entry or {}).get("run_id"), (entry or {}).get("timestamp"), asset_key,
                "ASSET_CHECK_EVALUATION") if entry else None,
            "materialization_event_storage_id": cursors.EventRef(
                target.get("run_id"), target.get("timestamp"), asset_key,
                cursors.MATERIALIZATION) if isinstance(target, dict) else None,
        }
        for column, ref in refs.items():
            value = row.get(column)
            if isinstance(value, int):
                row[column] = self._event(value, ref)
        row["evaluation_event"] = self.serialized("asset_check_executions", "evaluation_event",
                                                  row.get("evaluation_event"))
        return row

    def _instigator(self, table: str, body_column: str, key: str, row: Row) -> Row:
        self.table = table
        body, problem = cursors.remap_instigator_body(row.get(body_column), self.ids)
        if problem:
            name = _instigator_name(body)
            self.warnings.add("cursor", table, f"sensor cursor {problem}", name)
        row[body_column] = body
        return row

    def jobs(self, row: Row) -> Row:
        return self._instigator("jobs", "job_body", "job_origin_id", row)

    def instigators(self, row: Row) -> Row:
        return self._instigator("instigators", "instigator_body", "selector_id", row)

    def job_ticks(self, row: Row) -> Row:
        sensor_type = (self.sensor_types.get(str(row.get("selector_id")))
                       or self.sensor_types.get(str(row.get("job_origin_id"))))
        self.table = "job_ticks"
        body, problem = cursors.remap_tick_body(row.get("tick_body"), sensor_type, self.ids)
        if problem:
            self.warnings.add("cursor", "job_ticks", f"tick cursor {problem}",
                              _tick_name(body))
        row["tick_body"] = body
        return row

    def kvs(self, row: Row) -> Row:
        try:
            row["value"] = cursors.remap_kv(str(row.get("key")), row.get("value"), self.ids)
        except (ValueError, cursors.Unreadable) as exc:
            self.warnings.add("cursor", "kvs", "value kept unchanged: cannot rewrite its "
                              "storage ids", exc)
        return row


def sensor_types(schedules_conn) -> dict[str, str]:
    """instigator origin id and selector id -> sensor type, from the source's schedules.db."""
    found: dict[str, str] = {}
    if schedules_conn is None:
        return found
    queries = (("jobs", "SELECT job_origin_id, selector_id, job_body FROM jobs"),
               ("instigators", "SELECT NULL, selector_id, instigator_body FROM instigators"))
    for table, query in queries:
        if not has_table(schedules_conn, table):  # absent in an old source
            continue
        rows = schedules_conn.execute(query).fetchall()
        for origin_id, selector_id, body in rows:
            try:
                kind = cursors.sensor_type_of(body)
            except ValueError:
                kind = None
            for key in (origin_id, selector_id):
                if key and kind:
                    found[str(key)] = kind
    return found


def _json(text) -> dict | None:
    try:
        tree = json.loads(text) if text else None
    except ValueError:
        return None
    return tree if isinstance(tree, dict) else None


def _instigator_name(body) -> str:
    try:
        origin = json.loads(body or "{}").get("origin") or {}
        return str(origin.get("job_name") or origin.get("instigator_name") or "?")
    except ValueError:
        return "?"


def _tick_name(body) -> str:
    try:
        tick = json.loads(body or "{}")
        return str(tick.get("job_name") or tick.get("instigator_name") or "?")
    except ValueError:
        return "?"
