"""The parts of migrate-from-sqlite that need no database: finding the SQLite layout, laying out
the global event order, rewriting storage ids inside serialized values."""

from __future__ import annotations

import base64
import json
import sqlite3
import zlib
from pathlib import Path

import pytest

from dagpg.migrate import cursors
from dagpg.migrate.errors import SourceNotSqliteError
from dagpg.migrate.idmap import EventPlan, RunIds
from dagpg.migrate.source import SourceFiles, discover


def remap(old: int) -> int:
    return old * 10


IDS = cursors.IdMap(cursor=remap, event=lambda old, _ref: remap(old))


# -- layout ---------------------------------------------------------------------------------
def make_base(base: Path) -> Path:
    (base / "history" / "runs").mkdir(parents=True)
    (base / "history" / "runs.db").touch()
    return base


def test_default_layout_under_dagster_home(tmp_path):
    make_base(tmp_path)
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    layout = discover(tmp_path)
    assert layout.runs_db == tmp_path / "history" / "runs.db"
    assert layout.schedules_db == tmp_path / "schedules" / "schedules.db"
    assert layout.index_db == tmp_path / "history" / "runs" / "index.db"


def test_base_dir_given_directly(tmp_path):
    layout = discover(make_base(tmp_path / "storage"))
    assert layout.shards_dir == tmp_path / "storage" / "history" / "runs"
    assert layout.yaml_path is None


def test_storage_sqlite_base_dir_relative_and_from_env(tmp_path, monkeypatch):
    make_base(tmp_path / "storage")
    (tmp_path / "dagster.yaml").write_text("storage:\n  sqlite:\n    base_dir: storage\n")
    assert discover(tmp_path).base_dir == tmp_path / "storage"
    monkeypatch.setenv("OLD_BASE", str(tmp_path / "storage"))
    (tmp_path / "dagster.yaml").write_text("storage:\n  sqlite:\n    base_dir:\n"
                                           "      env: OLD_BASE\n")
    assert discover(tmp_path).runs_db == tmp_path / "storage" / "history" / "runs.db"


def test_legacy_per_storage_blocks(tmp_path):
    make_base(tmp_path / "b")
    (tmp_path / "dagster.yaml").write_text(f"""
run_storage:
  module: dagster._core.storage.runs
  class: SqliteRunStorage
  config: {{base_dir: {tmp_path}/b/history}}
event_log_storage:
  module: dagster._core.storage.event_log
  class: SqliteEventLogStorage
  config: {{base_dir: {tmp_path}/b/history/runs}}
schedule_storage:
  module: dagster._core.storage.schedules
  class: SqliteScheduleStorage
  config: {{base_dir: {tmp_path}/b/schedules}}
""")
    layout = discover(tmp_path)
    assert layout.runs_db == tmp_path / "b" / "history" / "runs.db"
    assert layout.shards_dir == tmp_path / "b" / "history" / "runs"
    assert layout.schedules_db == tmp_path / "b" / "schedules" / "schedules.db"


def test_a_consolidated_or_postgres_store_is_refused(tmp_path):
    make_base(tmp_path)
    (tmp_path / "dagster.yaml").write_text(
        "event_log_storage:\n  module: dagster._core.storage.event_log\n"
        "  class: ConsolidatedSqliteEventLogStorage\n  config: {base_dir: x}\n")
    with pytest.raises(SourceNotSqliteError, match="event_log_storage "
                                                   "ConsolidatedSqliteEventLogStorage"):
        discover(tmp_path)


# -- the global event order -----------------------------------------------------------------
_DDL = ("CREATE TABLE event_logs (id INTEGER PRIMARY KEY, run_id TEXT, event TEXT, "
        "dagster_event_type TEXT, timestamp TEXT, step_key TEXT, asset_key TEXT, partition TEXT)")


def write_db(path: Path, rows: list[tuple]) -> None:
    conn = sqlite3.connect(path)
    conn.execute(_DDL)
    conn.executemany("INSERT INTO event_logs (id, run_id, event, dagster_event_type, timestamp) "
                     "VALUES (?, ?, ?, ?, ?)", rows)
    conn.commit()
    conn.close()


def test_order_keeps_index_order_and_each_runs_order(tmp_path):
    """Runs a and b write concurrently; index ids interleave them. Run c has no index rows,
    the index holds one event of b that its shard lost."""
    base = make_base(tmp_path)
    shards = base / "history" / "runs"
    ev = lambda run, n, kind=None: (n, run, f"{run}{n}", kind, f"2026-01-01 00:00:0{n}")  # noqa: E731
    a5 = (9, *ev("a", 5)[1:])  # a gap in a's ids (rows deleted): positions still count 1..5
    write_db(shards / "a.db", [ev("a", 1), ev("a", 2, "RUN_START"), ev("a", 3),
                               ev("a", 4, "RUN_SUCCESS"), a5])
    write_db(shards / "b.db", [ev("b", 1, "RUN_START"), ev("b", 2), ev("b", 3, "RUN_SUCCESS")])
    write_db(shards / "c.db", [ev("c", 1), ev("c", 2)])
    index = [(1, "b", "b1", "RUN_START", "2026-01-01 00:00:01"),
             (2, "a", "a2", "RUN_START", "2026-01-01 00:00:02"),
             (3, "b", "b9", "ASSET_MATERIALIZATION", "2026-01-01 00:00:09"),  # index only
             (5, "b", "b3", "RUN_SUCCESS", "2026-01-01 00:00:03"),
             (6, "a", "a4", "RUN_SUCCESS", "2026-01-01 00:00:04")]
    write_db(shards / "index.db", index)
    files = SourceFiles(discover(base), tmp_path / "scratch")
    plan = EventPlan(tmp_path / "plan.db")
    stats = plan.build(files, ["a", "b", "c"])
    assert (stats.matched, stats.index_only, stats.unanchored_runs, stats.total) == (4, 1, 1, 11)

    order = {}
    for run, n in (("a", 5), ("b", 3), ("c", 2)):
        ids = RunIds(plan, run)
        for pos in range(1, n + 1):
            order[ids.new_id(pos)] = f"{run}{pos}"
    for index_id, new_id in plan.index_only_for("b"):
        order[new_id] = f"index{index_id}"
    assert [order[i] for i in sorted(order)] == [
        "b1", "a1", "a2", "index3", "b2", "b3", "a3", "a4", "a5", "c1", "c2"]
    assert sorted(order) == list(range(1, 12))
    # cursors: an index id maps to its event's new id, a vanished one to the event before it
    assert plan.floor(2) == 3 and plan.floor(4) == 4 and plan.floor(6) == 8
    assert plan.exact(4) is None and plan.floor(0) == 0 and plan.floor(-1) == -1


# -- storage ids inside serialized values ---------------------------------------------------
def test_asset_sensor_cursor_is_a_storage_id():
    assert cursors.remap_sensor_cursor("19", "ASSET", IDS) == "190"
    with pytest.raises(cursors.Unreadable):
        cursors.remap_sensor_cursor("not a number", "ASSET", IDS)


def test_run_status_sensor_cursor():
    from dagster._core.definitions.run_status_sensor_definition import RunStatusSensorCursor
    from dagster_shared.serdes import deserialize_value, serialize_value

    text = serialize_value(RunStatusSensorCursor(record_id=61, record_timestamp="t"))
    new = deserialize_value(cursors.remap_sensor_cursor(text, "RUN_STATUS", IDS))
    assert new == RunStatusSensorCursor(record_id=610, record_timestamp="t")


def test_multi_asset_sensor_cursor():
    cursor = json.dumps({'["a"]': ["p1", 7, {"p0": 3}], '["b"]': [None, None, {}]})
    assert json.loads(cursors.remap_sensor_cursor(cursor, "MULTI_ASSET", IDS)) == {
        '["a"]': ["p1", 70, {"p0": 30}], '["b"]': [None, None, {}]}


def test_automation_sensor_cursor_is_compressed_json():
    payload = json.dumps({"__class__": "AssetDaemonCursor", "previous_cursors": [
        {"__class__": "AutomationConditionCursor", "last_event_id": 5}]})
    cursor = "0" + base64.b64encode(zlib.compress(payload.encode())).decode()
    new = cursors.remap_sensor_cursor(cursor, "AUTOMATION", IDS)
    decoded = json.loads(zlib.decompress(base64.b64decode(new[1:])))
    assert decoded["previous_cursors"][0]["last_event_id"] == 50
    with pytest.raises(cursors.Unreadable):
        cursors.remap_sensor_cursor("1abc", "AUTOMATION", IDS)


def test_user_metadata_called_storage_id_is_left_alone():
    text = json.dumps({"__class__": "EventLogEntry", "metadata": {"storage_id": 3},
                       "record": {"__class__": "EventLogRecord", "storage_id": 3}})
    tree = json.loads(cursors.remap_serialized(text, IDS))
    assert tree["metadata"]["storage_id"] == 3 and tree["record"]["storage_id"] == 30


def test_instigator_and_tick_bodies():
    body = json.dumps({"__class__": "InstigatorState", "job_specific_data": {
        "__class__": "SensorInstigatorData", "cursor": "4",
        "sensor_type": {"__enum__": "SensorType.ASSET"}}})
    new, problem = cursors.remap_instigator_body(body, IDS)
    assert problem is None and json.loads(new)["job_specific_data"]["cursor"] == "40"
    custom = body.replace("SensorType.ASSET", "SensorType.STANDARD")
    same, problem = cursors.remap_instigator_body(custom, IDS)
    assert same == custom and problem == "kept: a custom sensor cursor"
    tick = json.dumps({"__class__": "TickData", "cursor": "4"})
    assert json.loads(cursors.remap_tick_body(tick, "ASSET", IDS)[0])["cursor"] == "40"


def test_kvs_values():
    assert cursors.remap_kv("EVENT_LOG_CONSUMER_CURSOR-PIPELINE_FAILURE", "36", IDS) == "360"
    assert cursors.remap_kv("SOMETHING_ELSE", "36", IDS) == "36"


def test_a_pointer_names_its_own_event_while_a_cursor_may_move_back(tmp_path):
    """Asset `wiped` was wiped: index.db lost its materialization (index id 3), its run's shard
    kept it. A cursor at 3 means "after the event before it"; a pointer to 3 (the
    materialization an asset check evaluated) is that very event, found in the shard by run,
    asset, time and type, never the other asset's materialization before it."""
    from datetime import UTC, datetime

    base = make_base(tmp_path)
    shards = base / "history" / "runs"
    t3 = datetime(2026, 1, 1, 0, 0, 3, 250000, UTC).timestamp()
    rows = [(1, "m", "e1", "RUN_START", "2026-01-01 00:00:01.000000", None),
            (2, "m", "e2", "ASSET_MATERIALIZATION", "2026-01-01 00:00:02.000000", '["x"]'),
            (3, "m", "e3", "ASSET_MATERIALIZATION", "2026-01-01 00:00:03.250000", '["wiped"]'),
            (4, "m", "e4", "RUN_SUCCESS", "2026-01-01 00:00:04.000000", None)]
    for path, kept in ((shards / "m.db", rows), (shards / "index.db", [rows[0], rows[1], rows[3]])):
        conn = sqlite3.connect(path)
        conn.execute(_DDL)
        conn.executemany("INSERT INTO event_logs (id, run_id, event, dagster_event_type, "
                         "timestamp, asset_key) VALUES (?, ?, ?, ?, ?, ?)", kept)
        conn.commit()
        conn.close()
    plan = EventPlan(tmp_path / "plan.db")
    plan.build(SourceFiles(discover(base), tmp_path / "scratch"), ["m"])
    ref = cursors.EventRef("m", t3, '["wiped"]', "ASSET_MATERIALIZATION")
    assert plan.floor(3) == 2                  # the cursor: the event before (x's)
    assert plan.event_id(3, ref) == 3          # the pointer: the wiped materialization itself
    assert plan.event_id(2, ref) == 2          # an index row still there decides
    assert plan.event_id(3, None) == cursors.NO_EVENT  # nothing to find it by: no event
    assert plan.event_id(3, cursors.EventRef("m", t3, '["x"]', "ASSET_MATERIALIZATION")) == 0

    evaluation = json.dumps({"__class__": "EventLogEntry", "run_id": "check-run", "dagster_event": {
        "__class__": "DagsterEvent", "event_type_value": "ASSET_CHECK_EVALUATION",
        "event_specific_data": {
            "__class__": "AssetCheckEvaluation", "check_name": "c",
            "asset_key": {"__class__": "AssetKey", "path": ["wiped"]},
            "target_materialization_data": {
                "__class__": "AssetCheckEvaluationTargetMaterializationData",
                "storage_id": 3, "run_id": "m", "timestamp": t3}}}})
    tree = json.loads(cursors.remap_serialized(evaluation, plan.ids()))
    target = tree["dagster_event"]["event_specific_data"]["target_materialization_data"]
    assert target["storage_id"] == 3


def test_the_verification_process_relays_its_error_and_exit_code(tmp_path):
    """Its one line and exit code reach the parent as they are (as pump.py's do)."""
    from dagpg.errors import NotPostgresError
    from dagpg.migrate.errors import VerifyProcessError
    from dagpg.migrate.verify_worker import EventsWorker, VerifyJob

    home = tmp_path / "not_postgres"
    home.mkdir()
    (home / "dagster.yaml").write_text("storage:\n  sqlite:\n    base_dir: /nowhere\n")
    files = SourceFiles(discover(make_base(tmp_path / "source")), tmp_path / "scratch")
    worker = EventsWorker(VerifyJob(files, tmp_path / "plan.db", home, ["a-run"]))
    try:
        with pytest.raises(VerifyProcessError) as failed:
            worker.result()
    finally:
        worker.stop()
    expected = NotPostgresError(str(home / "dagster.yaml"), "SQLite (storage.sqlite)")
    assert str(failed.value) == str(expected)
    assert failed.value.exit_code == expected.exit_code == 2
