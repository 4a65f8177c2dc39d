"""Prove the copy through Dagster's own APIs, on both instances, item by item.

Runs (records and tags), each run's events in order, asset records and the latest
materialization of each asset, materialized partitions, asset check executions, dynamic
partitions, backfills, instigator states, ticks, concurrency limits and daemon cursors. Source
values that hold event storage ids are first mapped to the new id space (the same rewrite the
copy applied), so any remaining difference is a real one. Everything is paged: memory does not
grow with the history.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field

from dagpg.dbtables import has_table
from dagpg.migrate import cursors
from dagpg.migrate.compare_events import PAGE, EventComparer
from dagpg.migrate.events import Dropped
from dagpg.migrate.report import Verification
from dagpg.migrate.verify_worker import EventsWorker, merge

log = logging.getLogger(__name__)


@dataclass
class Verifier:
    source: object        # DagsterInstance over SQLite (read-only)
    target: object        # DagsterInstance over PostgreSQL
    ids: cursors.IdMap    # the source's storage ids -> the target's
    sensor_types: dict[str, str]
    dropped: Dropped
    tick: Callable[[str], None] = lambda _check: None
    result: Verification = field(default_factory=Verification)
    # set: a second process (verify_worker.py) compares the events of the runs given to it
    events_worker: Callable[[list[str]], EventsWorker] | None = None
    sizes: dict[str, int] = field(default_factory=dict)  # events per run, to split evenly

    def __post_init__(self) -> None:
        self.comparer = EventComparer(self.source, self.target, self.ids, self.result)

    def run(self, shard_ids: list[str], index_conn: sqlite3.Connection | None,
            schedules_conn: sqlite3.Connection | None, runs_conn: sqlite3.Connection) -> Verification:
        self.result.expected.extend(
            [f"run {r} (dropped, see warnings)" for r in sorted(self.dropped.runs)]
            + [f"asset {a} (dropped, see warnings)" for a in sorted(self.dropped.asset_keys)])
        self.runs()
        self.events(shard_ids)
        self.assets()
        self.checks(index_conn)
        self.dynamic_partitions(index_conn)
        self.backfills()
        self.instigators()
        self.ticks(schedules_conn)
        self.concurrency()
        self.kvs(runs_conn)
        self.instance_id(runs_conn)
        return self.result

    # -- runs ----------------------------------------------------------------------------------
    def runs(self) -> None:
        cursor_s = cursor_t = None
        while True:
            page_s = [r for r in self.source.get_run_records(limit=PAGE, cursor=cursor_s)]
            page_t = self.target.get_run_records(limit=PAGE, cursor=cursor_t)
            if page_s:
                cursor_s = page_s[-1].dagster_run.run_id
            if page_t:
                cursor_t = page_t[-1].dagster_run.run_id
            page_s = [r for r in page_s if r.dagster_run.run_id not in self.dropped.runs]
            by_id = {r.dagster_run.run_id: r for r in page_t}
            for rec in page_s:
                run_id = rec.dagster_run.run_id
                other = by_id.pop(run_id, None)
                self.result.count("runs")
                if other is None:
                    self.result.differ("runs", run_id, "missing in PostgreSQL")
                    continue
                for attr in ("storage_id", "dagster_run", "create_timestamp", "update_timestamp",
                             "start_time", "end_time"):
                    if getattr(rec, attr) != getattr(other, attr):
                        self.result.differ("runs", run_id, f"{attr} differs")
            for run_id in by_id:
                self.result.differ("runs", run_id, "only in PostgreSQL")
            self.tick("runs")
            if not page_s and not page_t:
                return

    # -- events --------------------------------------------------------------------------------
    def events(self, shard_ids: list[str]) -> None:
        """Each run's events in order; with a worker, about half the runs (by events) go to a
        second process while this one does the rest."""
        runs = [r for r in shard_ids if r not in self.dropped.runs]
        mine, theirs = runs, []
        if self.events_worker is not None and len(runs) > 1:
            mine, theirs = _halves(runs, self.sizes)
        worker = self.events_worker(theirs) if theirs else None
        try:
            for run_id in mine:
                self.comparer.run_events(run_id)
                self.tick("events")
            if worker is not None:
                merge(self.result, worker.result())
        finally:
            if worker is not None:
                worker.stop()

    def entry(self, entry):
        return self.comparer.entry(entry)

    def record(self, rec):
        """A source record as the target should hold it: its storage id names its event."""
        if rec is None:
            return None
        entry = rec.event_log_entry
        key = entry.dagster_event.asset_key if entry.dagster_event else None
        ref = cursors.EventRef(entry.run_id, entry.timestamp,
                               key.to_string() if key else None,
                               entry.dagster_event_type.value if entry.dagster_event_type else "")
        return (self.ids.event(rec.storage_id, ref), self.entry(entry))

    # -- assets --------------------------------------------------------------------------------
    def assets(self) -> None:
        records_s = {r.asset_entry.asset_key: r.asset_entry
                     for r in self.source.get_asset_records()}
        records_t = {r.asset_entry.asset_key: r.asset_entry
                     for r in self.target.get_asset_records()}
        for key in sorted(set(records_s) | set(records_t), key=lambda k: k.to_string()):
            if key.to_string() in self.dropped.asset_keys:
                continue
            name = key.to_user_string()
            self.result.count("asset records")
            a, b = records_s.get(key), records_t.get(key)
            if a is None or b is None:
                self.result.differ("assets", name, "missing in " +
                                   ("PostgreSQL" if b is None else "SQLite"))
                continue
            if self.record(a.last_materialization_record) != (
                    None if b.last_materialization_record is None else
                    (b.last_materialization_record.storage_id,
                     b.last_materialization_record.event_log_entry)):
                self.result.differ("assets", name, "last materialization record differs")
            for attr in ("last_run_id", "asset_details"):
                if getattr(a, attr) != getattr(b, attr):
                    self.result.differ("assets", name, f"{attr} differs")
            self._latest(key, name)
            if self.source.get_materialized_partitions(key) != \
                    self.target.get_materialized_partitions(key):
                self.result.differ("partitions", name, "materialized partitions differ")
            self.result.count("materialized partitions")

    def _latest(self, key, name: str) -> None:
        for fetch in ("fetch_materializations", "fetch_observations"):
            got_s = getattr(self.source, fetch)(key, limit=1).records
            got_t = getattr(self.target, fetch)(key, limit=1).records
            self.result.count(f"latest {fetch[6:-1]}")
            rec_s = self.record(got_s[0]) if got_s else None
            rec_t = (got_t[0].storage_id, got_t[0].event_log_entry) if got_t else None
            if rec_s != rec_t:
                self.result.differ(f"latest {fetch[6:-1]}", name, "differs")

    def checks(self, index_conn) -> None:
        from dagster import AssetCheckKey, AssetKey

        if index_conn is None or not has_table(index_conn, "asset_check_executions"):
            return
        keys = index_conn.execute("SELECT DISTINCT asset_key, check_name FROM "
                                  "asset_check_executions ORDER BY 1, 2").fetchall()
        for asset_key, check_name in keys:
            if asset_key in self.dropped.asset_keys:
                continue
            key = AssetCheckKey(AssetKey.from_db_string(asset_key), check_name)
            cursor_s = cursor_t = None
            while True:
                page_s = self.source.event_log_storage.get_asset_check_execution_history(
                    key, limit=PAGE, cursor=cursor_s)
                page_t = self.target.event_log_storage.get_asset_check_execution_history(
                    key, limit=PAGE, cursor=cursor_t)
                for a, b in zip(page_s, page_t, strict=False):
                    self.result.count("asset check executions")
                    mapped = a._replace(event=self.entry(a.event) if a.event else None)
                    if mapped != b:
                        self.result.differ("asset checks", f"{key.to_user_string()}#{a.id}",
                                           "execution record differs")
                if len(page_s) != len(page_t):
                    self.result.differ("asset checks", key.to_user_string(),
                                       f"{len(page_s)} vs {len(page_t)} executions in a page")
                if len(page_s) < PAGE or len(page_t) < PAGE:
                    break
                cursor_s, cursor_t = page_s[-1].id, page_t[-1].id
            self.tick("checks")

    def dynamic_partitions(self, index_conn) -> None:
        if index_conn is None or not has_table(index_conn, "dynamic_partitions"):
            return
        names = [r[0] for r in index_conn.execute(
            "SELECT DISTINCT partitions_def_name FROM dynamic_partitions ORDER BY 1")]
        for name in names:
            self.result.count("dynamic partition sets")
            if list(self.source.get_dynamic_partitions(name)) != \
                    list(self.target.get_dynamic_partitions(name)):
                self.result.differ("dynamic partitions", name, "partitions differ")

    # -- scheduling ----------------------------------------------------------------------------
    def backfills(self) -> None:
        cursor_s = cursor_t = None
        while True:
            page_s = self.source.get_backfills(cursor=cursor_s, limit=PAGE)
            page_t = self.target.get_backfills(cursor=cursor_t, limit=PAGE)
            for a, b in zip(page_s, page_t, strict=False):
                self.result.count("backfills")
                if a != b:
                    self.result.differ("backfills", a.backfill_id, "backfill differs")
            if len(page_s) != len(page_t):
                self.result.differ("backfills", "*", f"{len(page_s)} vs {len(page_t)} in a page")
            if len(page_s) < PAGE:
                return
            cursor_s, cursor_t = page_s[-1].backfill_id, page_t[-1].backfill_id

    def instigators(self) -> None:
        from dagster_shared.serdes import deserialize_value, serialize_value

        states_t = {s.selector_id: s for s in self.target.all_instigator_state()}
        for state in self.source.all_instigator_state():
            self.result.count("instigator states")
            body, _ = cursors.remap_instigator_body(serialize_value(state), self.ids)
            expected = deserialize_value(body)
            other = states_t.pop(state.selector_id, None)
            if other != expected:
                self.result.differ("instigators", state.instigator_name,
                                   "missing in PostgreSQL" if other is None else "state differs")
        for other in states_t.values():
            self.result.differ("instigators", other.instigator_name, "only in PostgreSQL")

    def ticks(self, schedules_conn) -> None:
        """Each instigator's ticks, page by page of the source, matched by tick id within the
        same time window on the target (ids are kept)."""
        from dagster_shared.serdes import deserialize_value, serialize_value

        if schedules_conn is None:
            return
        pairs = schedules_conn.execute("SELECT DISTINCT job_origin_id, selector_id FROM job_ticks "
                                       "ORDER BY 1, 2").fetchall()
        for origin_id, selector_id in pairs:
            sensor_type = self.sensor_types.get(str(selector_id)) or \
                self.sensor_types.get(str(origin_id))
            before = None
            while True:
                page = self.source.get_ticks(origin_id, selector_id, before=before, limit=PAGE)
                low = page[-1].timestamp if len(page) == PAGE else None
                window = {t.tick_id: t for t in self.target.get_ticks(
                    origin_id, selector_id, before=before,
                    after=None if low is None else low - 1e-6)}
                for a in page:
                    self.result.count("ticks")
                    b = window.pop(a.tick_id, None)
                    body, _ = cursors.remap_tick_body(serialize_value(a.tick_data), sensor_type,
                                                      self.ids)
                    if b is None:
                        self.result.differ("ticks", f"{a.instigator_name}#{a.tick_id}",
                                           "missing in PostgreSQL")
                    elif deserialize_value(body) != b.tick_data:
                        self.result.differ("ticks", f"{a.instigator_name}#{a.tick_id}",
                                           "tick differs")
                for b in window.values():
                    self.result.differ("ticks", f"{b.instigator_name}#{b.tick_id}",
                                       "only in PostgreSQL")
                if low is None:
                    break
                before = low
            self.tick("ticks")

    def concurrency(self) -> None:
        storage_s, storage_t = self.source.event_log_storage, self.target.event_log_storage
        if not storage_s.supports_global_concurrency_limits:
            return
        keys_s, keys_t = storage_s.get_concurrency_keys(), storage_t.get_concurrency_keys()
        if keys_s != keys_t:
            self.result.differ("concurrency", "keys", f"{sorted(keys_s)} vs {sorted(keys_t)}")
            return
        for key in sorted(keys_s):
            self.result.count("concurrency limits")
            a, b = storage_s.get_concurrency_info(key), storage_t.get_concurrency_info(key)
            if (a.slot_count, a.claimed_slots, a.pending_steps, a.limit) != \
                    (b.slot_count, b.claimed_slots, b.pending_steps, b.limit):
                self.result.differ("concurrency", key, "limit or slots differ")

    def instance_id(self, runs_conn) -> None:
        """The UI's instanceId (instance_info). Dagster creates one on first read, so it is
        only asked of the source when the source has one."""
        if not has_table(runs_conn, "instance_info"):
            return
        has_one = runs_conn.execute("SELECT count(*) FROM instance_info").fetchone()[0]
        if has_one:
            self.result.count("instance id")
            if self.source.run_storage.get_run_storage_id() != \
                    self.target.run_storage.get_run_storage_id():
                self.result.differ("instance id", "instance_info", "run_storage_id differs")

    def kvs(self, runs_conn) -> None:
        if not has_table(runs_conn, "kvs"):
            return
        keys = {r[0] for r in runs_conn.execute("SELECT key FROM kvs")}
        if not keys:
            return
        got_s = self.source.run_storage.get_cursor_values(keys)
        got_t = self.target.run_storage.get_cursor_values(keys)
        for key in sorted(keys):
            self.result.count("daemon cursors (kvs)")
            try:
                expected = cursors.remap_kv(key, got_s.get(key), self.ids)
            except cursors.Unreadable:
                expected = got_s.get(key)
            if expected != got_t.get(key):
                self.result.differ("kvs", key, "value differs")


def _halves(runs: list[str], sizes: dict[str, int]) -> tuple[list[str], list[str]]:
    """Two lists of runs with about as many events each (largest first, to the lighter)."""
    ordered = sorted(runs, key=lambda r: (-sizes.get(r, 0), r))
    halves: tuple[list[str], list[str]] = ([], [])
    weights = [0, 0]
    for run_id in ordered:
        side = 0 if weights[0] <= weights[1] else 1
        halves[side].append(run_id)
        weights[side] += sizes.get(run_id, 0) + 1
    return halves
