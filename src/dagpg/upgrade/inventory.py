"""What an upgrade must keep: runs, events per run, asset records and the latest materialization
of each asset, materialized partitions, check executions, schedules/sensors and their ticks,
the instance id.

It is taken twice. Before the migration it is read with plain SQL from the tables every Dagster
release since 1.0 has on PostgreSQL (the installed, newer Dagster cannot be trusted to read an
older schema through its API: its table definitions name columns the old schema may not have).
After the migration it is read through Dagster's own APIs (`DagsterInstance`), paged, so a
change in how Dagster reads its tables shows as a difference. Both sides produce the same
plain structure; `compare()` lists every difference.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PAGE = 1000
SPLIT_FROM = 20_000  # events: below this a second process costs more than it saves


@dataclass
class Inventory:
    runs: dict[str, str] = field(default_factory=dict)                 # run_id -> status
    events: dict[str, list[int]] = field(default_factory=dict)         # run_id -> [count, max id]
    assets: dict[str, int | None] = field(default_factory=dict)        # key -> last mat. id
    latest: dict[str, list] = field(default_factory=dict)              # key -> [id, run_id]
    partitions: dict[str, list[str]] = field(default_factory=dict)     # key -> sorted partitions
    checks: dict[str, list[list]] = field(default_factory=dict)        # key -> [[id, run, status]]
    instigators: dict[str, list[str]] = field(default_factory=dict)    # origin|selector -> [type, status]
    ticks: dict[str, list[list]] = field(default_factory=dict)         # origin|selector -> [[id, status]]
    instance_id: str | None = None

    def counts(self) -> dict[str, int]:
        return {
            "runs": len(self.runs),
            "events": sum(c for c, _ in self.events.values()),
            "asset records": len(self.assets),
            "latest materializations": len(self.latest),
            "materialized partitions": sum(len(p) for p in self.partitions.values()),
            "check executions": sum(len(c) for c in self.checks.values()),
            "schedules and sensors": len(self.instigators),
            "ticks": sum(len(t) for t in self.ticks.values()),
        }

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Inventory:
        return cls(**data)


# -- before: SQL on the tables as any Dagster >= 1.0 left them -----------------------------------

def from_sql(conn) -> Inventory:
    """Read the inventory with plain SQL (a psycopg2 connection; one snapshot if the caller
    opened a REPEATABLE READ transaction)."""
    inv = Inventory()
    with conn.cursor() as cur:
        cur.execute("SELECT run_id, status FROM runs")
        inv.runs = dict(cur.fetchall())
        cur.execute("SELECT run_id, count(*), max(id) FROM event_logs "
                    "WHERE run_id IN (SELECT run_id FROM runs) GROUP BY run_id")
        inv.events = {r: [int(n), int(m)] for r, n, m in cur.fetchall()}
        cur.execute("SELECT asset_key FROM asset_keys WHERE wipe_timestamp IS NULL")
        keys = [k for (k,) in cur.fetchall()]
        cur.execute(
            "SELECT DISTINCT ON (asset_key) asset_key, id, run_id FROM event_logs "
            "WHERE dagster_event_type = 'ASSET_MATERIALIZATION' AND asset_key IS NOT NULL "
            "ORDER BY asset_key, id DESC")
        latest = {k: [int(i), r] for k, i, r in cur.fetchall()}
        inv.assets = {k: (latest[k][0] if k in latest else None) for k in keys}
        inv.latest = {k: v for k, v in latest.items() if k in inv.assets}
        cur.execute(
            "SELECT asset_key, array_agg(DISTINCT partition) FROM event_logs "
            "WHERE dagster_event_type = 'ASSET_MATERIALIZATION' AND partition IS NOT NULL "
            "GROUP BY asset_key")
        inv.partitions = {k: sorted(p) for k, p in cur.fetchall() if k in inv.assets}
        if _has_table(cur, "asset_check_executions"):
            cur.execute("SELECT asset_key, check_name, id, run_id, execution_status "
                        "FROM asset_check_executions ORDER BY id DESC")
            for key, name, id_, run_id, status in cur.fetchall():
                inv.checks.setdefault(_check_key(key, name), []).append([int(id_), run_id,
                                                                         status])
        cur.execute("SELECT job_origin_id, selector_id, job_type, status FROM jobs")
        for origin, selector, kind, status in cur.fetchall():
            inv.instigators[_instigator_key(origin, selector)] = [kind, status]
        cur.execute("SELECT job_origin_id, selector_id, id, status FROM job_ticks "
                    "ORDER BY id DESC")
        for origin, selector, id_, status in cur.fetchall():
            inv.ticks.setdefault(_instigator_key(origin, selector), []).append([int(id_), status])
        if _has_table(cur, "instance_info"):
            cur.execute("SELECT run_storage_id FROM instance_info LIMIT 1")
            row = cur.fetchone()
            inv.instance_id = row[0] if row else None
    return inv


def _has_table(cur, table: str) -> bool:
    cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f"public.{table}",))
    return bool(cur.fetchone()[0])


# -- after: through Dagster's APIs ----------------------------------------------------------------

def from_dagster(dagster, expected: Inventory, tick: Callable[[str], None] | None = None,
                 home: Path | None = None) -> Inventory:
    """Read the inventory through a DagsterInstance. Keys the API does not enumerate (check
    keys, instigators without a state) are asked for as `expected` lists them. With `home`
    (the instance's DAGSTER_HOME) and a large history, a second process reads half the
    events."""
    from dagster import AssetCheckKey, AssetKey

    say = tick or (lambda _what: None)
    inv = Inventory()
    cursor = None
    while True:
        page = dagster.get_run_records(limit=PAGE, cursor=cursor)
        for rec in page:
            inv.runs[rec.dagster_run.run_id] = rec.dagster_run.status.value
        if len(page) < PAGE:
            break
        cursor = page[-1].dagster_run.run_id
    say("runs")
    inv.events = _events(dagster, sorted(set(inv.runs) | set(expected.runs)), expected, home)
    say("events")
    for rec in dagster.get_asset_records():
        entry = rec.asset_entry
        key = entry.asset_key.to_string()
        last = entry.last_materialization_record
        inv.assets[key] = last.storage_id if last else None
        got = dagster.fetch_materializations(entry.asset_key, limit=1).records
        if got:
            inv.latest[key] = [got[0].storage_id, got[0].run_id]
        partitions = dagster.get_materialized_partitions(entry.asset_key)
        if partitions:
            inv.partitions[key] = sorted(partitions)
    say("assets")
    for key in expected.checks:
        asset_key, _, name = key.rpartition("|")
        check_key = AssetCheckKey(AssetKey.from_db_string(asset_key), name)
        cursor, rows = None, []
        while True:
            page = dagster.event_log_storage.get_asset_check_execution_history(
                check_key, limit=PAGE, cursor=cursor)
            rows += [[r.id, r.run_id, r.status.value] for r in page]
            if len(page) < PAGE:
                break
            cursor = page[-1].id
        if rows:
            inv.checks[key] = rows
    say("checks")
    for state in dagster.all_instigator_state():
        inv.instigators[_instigator_key(state.instigator_origin_id, state.selector_id)] = [
            state.instigator_type.value, state.status.value]
    for key in sorted(set(inv.instigators) | set(expected.ticks)):
        origin, _, selector = key.partition("|")
        ticks = [[t.tick_id, t.status.value]
                 for t in dagster.get_ticks(origin, selector or None)]
        if ticks:
            inv.ticks[key] = ticks
    say("ticks")
    inv.instance_id = dagster.run_storage.get_run_storage_id()
    return inv


def _events(dagster, run_ids: list[str], expected: Inventory, home: Path | None
            ) -> dict[str, list[int]]:
    from dagpg.migrate.verify import _halves  # the migration's split: runs by event count
    from dagpg.upgrade.events_worker import EventsWorker, count_events

    sizes = {r: c for r, (c, _) in expected.events.items()}
    if home is None or sum(sizes.values()) < SPLIT_FROM or (os.cpu_count() or 1) < 2:
        return count_events(dagster, run_ids)
    mine, theirs = _halves(run_ids, sizes)
    worker = EventsWorker(home, theirs)
    try:
        found = count_events(dagster, mine)
        found.update(worker.result())
        return found
    finally:
        worker.stop()


def _check_key(asset_key: str, name: str) -> str:
    return f"{asset_key}|{name}"


def _instigator_key(origin: str, selector: str | None) -> str:
    return f"{origin}|{selector or ''}"


# -- comparing ------------------------------------------------------------------------------------

def compare(before: Inventory, after: Inventory) -> list[str]:
    """Every difference, one line each ("what: item: before vs after")."""
    out: list[str] = []
    for name in ("runs", "events", "assets", "latest", "partitions", "checks", "instigators",
                 "ticks"):
        a, b = getattr(before, name), getattr(after, name)
        for key in sorted(set(a) | set(b)):
            if key not in b:
                out.append(f"{_LABEL[name]}: {_show(key)}: missing after the upgrade")
            elif key not in a:
                out.append(f"{_LABEL[name]}: {_show(key)}: new after the upgrade")
            elif _norm(a[key]) != _norm(b[key]):
                out.append(f"{_LABEL[name]}: {_show(key)}: {_brief(a[key])} before, "
                           f"{_brief(b[key])} after")
    if before.instance_id and before.instance_id != after.instance_id:
        out.append(f"instance id: {before.instance_id} before, {after.instance_id} after")
    return out


_LABEL = {"runs": "run", "events": "events of run", "assets": "asset record",
          "latest": "latest materialization", "partitions": "materialized partitions",
          "checks": "check executions", "instigators": "schedule/sensor",
          "ticks": "ticks of schedule/sensor"}


def _norm(value):
    return json.loads(json.dumps(value))  # tuples and lists alike


def _show(key: str) -> str:
    if key.startswith("["):  # an asset key's JSON, possibly with "|check_name"
        asset, sep, rest = key.partition("|")
        try:
            return "/".join(json.loads(asset)) + (f" {rest}" if sep else "")
        except ValueError:
            return key
    return key


def _brief(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def summarize(differences: list[str]) -> str:
    """The first few differences in one line."""
    shown = "; ".join(differences[:3])
    more = len(differences) - 3
    return shown + (f" (and {more} more)" if more > 0 else "")
