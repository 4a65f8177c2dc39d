"""`dagpg migrate-from-sqlite` on a SQLite instance written by real Dagster (sqlite_fixtures.py):
everything copied and proven equal through Dagster's APIs, storage ids remapped consistently,
the source never touched, and the daemon carrying on against PostgreSQL afterwards.
"""

from __future__ import annotations

import json
import os
import pty
import re
import sqlite3
import subprocess

import pytest
from click.testing import CliRunner

from dagpg import pg
from dagpg.cli import cli
from dagpg.migrate import migrate
from dagpg.migrate.source import discover
from tests import processes, sqlite_fixtures

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def sqlite_home(tmp_path_factory):
    return sqlite_fixtures.shared_home(tmp_path_factory)


def run_cli(*args: str):
    return CliRunner().invoke(cli, [*args], catch_exceptions=False)


def shards(home) -> list[str]:
    """Run shard files, the hidden `.db` of run_id '' included."""
    return discover(home.home).shard_ids()


def index_event(base_dir, index_id: int) -> tuple:
    """(run_id, type, timestamp, asset_key) of an index.db event: what identifies it anywhere."""
    (row,) = sqlite_fixtures.sqlite_rows(
        base_dir / "history" / "runs" / "index.db",
        "SELECT run_id, dagster_event_type, timestamp, asset_key FROM event_logs "
        f"WHERE id = {int(index_id)}")
    return row


def target_id(cur, key: tuple) -> int:
    run_id, event_type, timestamp, asset_key = key
    cur.execute("SELECT id FROM event_logs WHERE run_id = %s AND dagster_event_type = %s AND "
                "timestamp = %s AND asset_key IS NOT DISTINCT FROM %s",
                (run_id, event_type, timestamp, asset_key))
    (found,) = cur.fetchall()
    return found[0]


def source_cursors(base_dir) -> dict[str, str]:
    rows = sqlite_fixtures.sqlite_rows(
        base_dir / "schedules" / "schedules.db",
        "SELECT json_extract(instigator_body, '$.origin.job_name'), "
        "json_extract(instigator_body, '$.job_specific_data.cursor') FROM instigators")
    return dict(rows)


def test_migrates_everything_and_proves_it(sqlite_home, dagster_home):
    result = run_cli("migrate-from-sqlite", str(sqlite_home.home), "--yes", "--force", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["status"] == "done" and report["ok"]
    verification = report["verification"]
    assert verification["ok"] and verification["difference_count"] == 0
    for check in ("runs", "events", "asset records", "latest materialization",
                  "materialized partitions", "asset check executions", "dynamic partition sets",
                  "backfills", "instigator states", "ticks", "concurrency limits",
                  "daemon cursors (kvs)", "instance id"):
        assert verification["compared"].get(check, 0) > 0, check
    counts = {t["table"]: t for t in report["tables"]}
    unequal = {name for name, t in counts.items() if not t["equal"]}
    assert unequal == {"asset_keys"}  # the one key too long for PostgreSQL, reported below
    assert counts["event_logs"]["target"] > 150
    assert not report["runs"]["differing"]
    assert report["runs"]["compared"] == len(shards(sqlite_home)) >= 10
    (warning,) = report["warnings"]
    assert warning["kind"] == "too_long" and warning["table"] == "asset_keys"
    assert "611 characters, the column holds 512" in warning["message"]
    with pg.connection(dagster_home.target) as conn, conn.cursor() as cur:
        cur.execute("SELECT run_storage_id FROM instance_info")
        assert cur.fetchall() == sqlite_fixtures.sqlite_rows(
            sqlite_home.base_dir / "history" / "runs.db", "SELECT run_storage_id FROM instance_info")
    # The compute logs moved too, and the UI reads them through the target's log manager.
    # (a run's steps' and a sensor tick's; not those of the deleted run)
    source_logs = sqlite_home.home / "compute_logs"
    deleted = {p.name for p in source_logs.iterdir()} - {
        r[0] for r in sqlite_fixtures.sqlite_rows(sqlite_home.base_dir / "history" / "runs.db",
                                                  "SELECT run_id FROM runs")} - {"__repository__"}
    captured = sorted(p for p in source_logs.rglob("*") if p.suffix in (".out", ".err")
                      and p.relative_to(source_logs).parts[0] not in deleted)
    assert len(deleted) == 1 and any("__repository__" in p.parts for p in captured)
    assert report["plan"]["compute_logs"]["files"] == len(captured) + len(
        [p for p in source_logs.rglob("*.complete") if p.relative_to(source_logs).parts[0]
         not in deleted])
    assert verification["compared"]["compute logs"] == len({p.with_suffix("") for p in captured})
    from dagster import DagsterInstance

    with DagsterInstance.from_config(str(dagster_home.home)) as target:
        for path in captured:
            key = [*path.relative_to(source_logs).parent.parts, path.stem]
            data = target.compute_log_manager.get_log_data(key)
            assert (data.stdout if path.suffix == ".out" else data.stderr) == path.read_bytes()
    assert sqlite_home.unchanged(), "the source was modified"


def test_storage_ids_keep_their_meaning(sqlite_home, dagster_home):
    """Cursors, records and kvs point at the same events after the move, and PostgreSQL's ids
    order the index events exactly as SQLite's index did."""
    # with a second process comparing half of the runs' events (auto only past 100k events)
    report = migrate(dagster_home.resolve(), sqlite_home.home, force=True, verify_workers=1)
    assert report.verification.ok
    assert report.verification.compared["events"] == report.plan["events"]["total"]
    base = sqlite_home.base_dir
    before = source_cursors(base)
    with pg.connection(dagster_home.target) as conn, conn.cursor() as cur:
        cur.execute("SELECT instigator_body::json #>> '{origin,job_name}', "
                    "instigator_body::json #>> '{job_specific_data,cursor}' FROM instigators")
        after = dict(cur.fetchall())
        # asset sensor: the cursor is the storage id of the last materialization it saw
        assert int(after["parks_sensor"]) == target_id(
            cur, index_event(base, int(before["parks_sensor"])))
        assert int(after["parks_sensor"]) != int(before["parks_sensor"])
        # run-status sensor: record_id of the last run-status event it saw
        old = json.loads(before["success_sensor"])["record_id"]
        new = json.loads(after["success_sensor"])["record_id"]
        assert new == target_id(cur, index_event(base, old))
        # run-retry consumer cursors in kvs
        cur.execute("SELECT key, value FROM kvs ORDER BY key")
        kvs_after = dict(cur.fetchall())
        kvs_before = dict(sqlite_fixtures.sqlite_rows(base / "history" / "runs.db",
                                                       "SELECT key, value FROM kvs"))
        assert kvs_before.keys() == kvs_after.keys() and kvs_before
        for key, value in kvs_before.items():
            assert int(kvs_after[key]) == target_id(cur, index_event(base, int(value)))
        # asset_keys.last_materialization holds an EventLogRecord with its storage id
        cur.execute("SELECT last_materialization::json ->> 'storage_id', last_materialization "
                    "FROM asset_keys WHERE asset_key = %s", ('["parks"]',))
        storage_id, record = cur.fetchone()
        (old_record,) = sqlite_fixtures.sqlite_rows(
            base / "history" / "runs" / "index.db",
            "SELECT last_materialization FROM asset_keys WHERE asset_key = '[\"parks\"]'")
        old_id = json.loads(old_record[0])["storage_id"]
        assert int(storage_id) == target_id(cur, index_event(base, old_id))
        # the index order is kept: every index event, in index order, has increasing new ids
        keys = sqlite_fixtures.sqlite_rows(
            base / "history" / "runs" / "index.db",
            "SELECT run_id, dagster_event_type, timestamp, asset_key FROM event_logs ORDER BY id")
        new_ids = [target_id(cur, tuple(k)) for k in keys]
        assert new_ids == sorted(new_ids) and len(set(new_ids)) == len(new_ids)
        # each run keeps its own order: shard ids and new ids sort the same way
        run_id = sqlite_fixtures.sqlite_rows(base / "history" / "runs.db",
                                             "SELECT run_id FROM runs ORDER BY id LIMIT 1")[0][0]
        shard = sqlite_fixtures.sqlite_rows(base / "history" / "runs" / f"{run_id}.db",
                                            "SELECT event FROM event_logs ORDER BY id")
        cur.execute("SELECT event FROM event_logs WHERE run_id = %s ORDER BY id", (run_id,))
        copied = [r[0] for r in cur.fetchall()]
        assert len(copied) == len(shard)
        rewritten = 0
        for new_text, (old_text,) in zip(copied, shard, strict=True):
            if new_text != old_text:  # only the check's pointer to its target materialization
                old_ev, new_ev = json.loads(old_text), json.loads(new_text)
                old_data = old_ev["dagster_event"]["event_specific_data"]
                new_data = new_ev["dagster_event"]["event_specific_data"]
                old_sid = old_data["target_materialization_data"].pop("storage_id")
                new_sid = new_data["target_materialization_data"].pop("storage_id")
                assert new_sid == target_id(cur, index_event(base, old_sid))
                assert old_ev == new_ev
                rewritten += 1
        assert rewritten == 1
        # ids are dense and every sequence is past its table's largest id
        cur.execute("SELECT count(*), min(id), max(id) FROM event_logs")
        count, low, high = cur.fetchone()
        assert (low, high) == (1, count)
        cur.execute("SELECT nextval('event_logs_id_seq'), nextval('job_ticks_id_seq'), "
                    "(SELECT max(id) FROM job_ticks), nextval('runs_id_seq'), "
                    "(SELECT max(id) FROM runs)")
        next_event, next_tick, max_tick, next_run, max_run = cur.fetchone()
        assert next_event == high + 1 and next_tick == max_tick + 1 and next_run == max_run + 1
    assert sqlite_home.unchanged()


def test_on_a_terminal_each_phase_draws_a_bar(sqlite_home, dagster_home):
    """Run as a sysadmin runs it, stderr on a terminal: a bar per phase, counted in its unit
    (the compute logs' bar once got the list of files as its length and ended in a traceback)."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([str(processes.BIN / "dagpg"), "migrate-from-sqlite",
                             str(sqlite_home.home), "--yes", "--force"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=follower)
    os.close(follower)
    screen = bytearray()
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the terminal's last writer is gone
            break
        if not chunk:
            break
        screen += chunk
    os.close(leader)
    out = proc.stdout.read().decode()
    assert proc.wait(timeout=60) == 0, screen.decode(errors="replace")[-3000:]
    text = screen.decode(errors="replace")
    assert "Traceback" not in text
    logs = re.findall(r"logs +\[[#-]*\] +(\d+)/(\d+)", text)
    assert logs and logs[-1][0] == logs[-1][1], text[-2000:]
    assert out.startswith("Migrated: ")


def test_dry_run_prints_the_plan_and_writes_nothing(sqlite_home, empty_dagster_home):
    result = run_cli("migrate-from-sqlite", str(sqlite_home.home), "--dry-run", "--force")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"Dry run (nothing written): {sqlite_home.home} -> ")
    assert f"Run shards: {len(shards(sqlite_home))}, events in them: " in result.stdout
    runs = sqlite_fixtures.sqlite_rows(sqlite_home.base_dir / "history" / "runs.db",
                                       "SELECT count(*) FROM runs")[0][0]
    assert re.search(rf"^  runs +{runs} *$", result.stdout, re.M)
    assert f"… plan ({len(shards(sqlite_home))} shards)" in result.stderr
    with pg.connection(empty_dagster_home.target) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_tables WHERE schemaname IN ('public', 'dagpg')")
        assert cur.fetchone()[0] == 0
    assert sqlite_home.unchanged()


def test_refuses_a_target_with_history_and_a_rerun_says_it_is_done(sqlite_home, dagster_home):
    with pg.connection(dagster_home.target) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO kvs (key, value) VALUES ('someone', 'was here')")
    result = run_cli("migrate-from-sqlite", str(sqlite_home.home), "--yes", "--force")
    assert result.exit_code == 1
    assert result.output.splitlines()[-1] == (
        f"Error: target {dagster_home.target.url()} already holds Dagster history (rows in "
        "kvs); point --dagster-home at an instance with an empty database")
    with pg.connection(dagster_home.target) as conn, conn.cursor() as cur:
        cur.execute("DELETE FROM kvs")
    assert run_cli("migrate-from-sqlite", str(sqlite_home.home), "--yes", "--force",
                   "--silent").exit_code == 0
    # A retry (say, after a kill that landed after the final commit) succeeds, saying so.
    again = run_cli("migrate-from-sqlite", str(sqlite_home.home), "--yes", "--force",
                    "--silent")
    assert again.exit_code == 0, again.output
    lines = again.output.splitlines()
    assert lines[0] == (f"Already migrated: {sqlite_home.home} -> {dagster_home.target.url()} "
                        "[migration #1]")
    assert lines[-1].startswith(f"Note: migration #1 of {sqlite_home.home} into "
                                f"{dagster_home.target.url()} finished ")
    assert lines[-1].endswith(" and the source has not changed since: nothing to do")


def test_refuses_while_the_source_daemon_heart_beats(sqlite_home, dagster_home, tmp_path):
    from dagster import DagsterInstance
    from dagster._daemon.types import DaemonHeartbeat

    copy = sqlite_fixtures.copy_home(sqlite_home, tmp_path / "busy")
    with DagsterInstance.from_config(str(copy.home)) as instance:
        instance.add_daemon_heartbeat(DaemonHeartbeat(
            timestamp=__import__("time").time(), daemon_type="SENSOR", daemon_id="live"))
    busy = sqlite_fixtures.checksums(copy.base_dir)
    result = run_cli("migrate-from-sqlite", str(copy.home), "--yes")
    assert result.exit_code == 1
    line = result.output.splitlines()[-1]
    assert line.startswith("Error: the SQLite instance's SENSOR daemon heart-beat ")
    assert line.endswith("s ago (less than 120s): stop dagster-daemon and dagster-webserver "
                         "first, or pass --force if they are already stopped")
    assert sqlite_fixtures.checksums(copy.base_dir) == busy
    with pg.connection(dagster_home.target) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM dagpg.migration_runs")
        assert cur.fetchone()[0] == 0
    forced = run_cli("migrate-from-sqlite", str(copy.home), "--yes", "--force", "--silent")
    assert forced.exit_code == 0, forced.output


@pytest.mark.parametrize("behind", ["every file", "the run shards"])
def test_older_source_schema_is_upgraded_on_a_copy(sqlite_home, dagster_home, tmp_path, behind):
    """A source one Dagster revision behind: upgraded in the scratch folder, never in place."""
    copy = sqlite_fixtures.copy_home(sqlite_home, tmp_path / "old")
    from dagpg.migrate.revisions import _script, dagster_head

    previous = _script().get_revision(dagster_head()).down_revision
    files = copy.base_dir.rglob("*.db") if behind == "every file" else \
        [p for p in (copy.base_dir / "history" / "runs").glob("*.db") if p.name != "index.db"]
    for path in files:
        conn = sqlite3.connect(path)
        conn.execute("UPDATE alembic_version SET version_num = ?", (previous,))
        conn.commit()
        conn.close()
    stamped = sqlite_fixtures.checksums(copy.base_dir)
    result = run_cli("migrate-from-sqlite", str(copy.home), "--yes", "--force", "--json")
    assert result.exit_code == 0, result.output
    # Dagster's SQLite upgrade prints to stdout and draws tqdm bars on stderr: kept out of
    # the kit's output (the JSON parses, stderr holds only the kit's own progress lines).
    report = json.loads(result.stdout)
    assert not [ln for ln in result.stderr.splitlines() if not ln.startswith("… ")], \
        result.stderr
    assert previous in report["revisions"]["source"]
    assert not report["revisions"]["at_head"] and report["verification"]["ok"]
    assert any("upgraded to" in note for note in report["notes"])
    assert sqlite_fixtures.checksums(copy.base_dir) == stamped


def test_the_daemon_carries_on_against_postgres(sqlite_home, dagster_home, tmp_path):
    """After the move: new runs, events and ticks get fresh ids (no key collisions), the asset
    sensor resumes from its remapped cursor (no re-fire for what it saw) and fires once for a
    new materialization, the run-status sensor picks up exactly the run it had not seen yet."""
    import dagster as dg

    from dagpg.schema import open_dagster_instance
    from tests import migrate_fixture_defs as m

    migrate(dagster_home.resolve(), sqlite_home.home, force=True)
    with pg.connection(dagster_home.target) as conn, conn.cursor() as cur:
        cur.execute("SELECT (SELECT max(id) FROM event_logs), (SELECT max(id) FROM runs), "
                    "(SELECT max(id) FROM job_ticks)")
        max_event, max_run, max_tick = cur.fetchone()
        cur.execute("SELECT max(id) FROM event_logs WHERE dagster_event_type = 'PIPELINE_SUCCESS'")
        last_success = cur.fetchone()[0]
    cursors = _pg_cursors(dagster_home.target)
    assert json.loads(cursors["success_sensor"])["record_id"] < last_success  # one run unseen

    workspace = sqlite_fixtures.write_workspace(tmp_path / "workspace.yaml")
    daemon = processes.start_daemon(dagster_home.home, tmp_path, workspace=workspace)
    try:
        # the asset sensor ticks and skips: nothing new since its remapped cursor
        processes.wait_for(lambda: _new_ticks(dagster_home.target, "parks_sensor", max_tick),
                           timeout=180, what="a parks_sensor tick on PostgreSQL", proc=daemon)
        assert _pg_cursors(dagster_home.target)["parks_sensor"] == cursors["parks_sensor"]
        assert _runs_by_sensor(dagster_home.target, "parks_sensor", max_run) == []
        # the run-status sensor resumes and reaches the success it had not seen
        processes.wait_for(
            lambda: json.loads(_pg_cursors(dagster_home.target)["success_sensor"])["record_id"]
            >= last_success, timeout=120, what="success_sensor to resume", proc=daemon)
        with open_dagster_instance(dagster_home.resolve()) as instance:
            result = dg.materialize([m.parks], instance=instance)
            (new_event,) = [r.storage_id for r in instance.fetch_materializations(
                dg.AssetKey("parks"), limit=1).records]
        assert result.success and new_event > max_event
        runs = processes.wait_for(
            lambda: _runs_by_sensor(dagster_home.target, "parks_sensor", max_run),
            timeout=120, what="parks_sensor to request a run", proc=daemon)
        processes.wait_for(lambda: _pg_cursors(dagster_home.target)["parks_sensor"]
                           == str(new_event), timeout=60, what="the cursor to move", proc=daemon)
        processes.wait_for(lambda: _run_status(dagster_home.target, runs[0]) == "SUCCESS",
                           timeout=180, what="the sensor's run to finish", proc=daemon)
    finally:
        processes.stop(daemon)
    assert len(runs) == 1
    log = daemon.log_path.read_text(errors="replace")
    assert "duplicate key value" not in log and "UniqueViolation" not in log
    with pg.connection(dagster_home.target) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM job_ticks WHERE id > %s AND status = 'FAILURE'",
                    (max_tick,))
        assert cur.fetchone()[0] == 0
        cur.execute("SELECT count(*) FROM event_logs WHERE id > %s AND run_id = %s",
                    (max_event, runs[0]))
        assert cur.fetchone()[0] > 5  # the new run wrote its events after the migrated ones


def _pg_cursors(target) -> dict[str, str]:
    with pg.connection(target) as conn, conn.cursor() as cur:
        cur.execute("SELECT instigator_body::json #>> '{origin,job_name}', "
                    "instigator_body::json #>> '{job_specific_data,cursor}' FROM instigators")
        return dict(cur.fetchall())


def _new_ticks(target, name: str, after: int) -> list:
    with pg.connection(target) as conn, conn.cursor() as cur:
        cur.execute("SELECT id, status FROM job_ticks WHERE id > %s AND tick_body::json ->> "
                    "'job_name' = %s AND status <> 'STARTED'", (after, name))
        return cur.fetchall()


def _runs_by_sensor(target, name: str, after: int) -> list[str]:
    with pg.connection(target) as conn, conn.cursor() as cur:
        cur.execute("SELECT r.run_id FROM runs r JOIN run_tags t ON t.run_id = r.run_id "
                    "WHERE r.id > %s AND t.key = 'dagster/sensor_name' AND t.value = %s",
                    (after, name))
        return [row[0] for row in cur.fetchall()]


def _run_status(target, run_id: str) -> str:
    with pg.connection(target) as conn, conn.cursor() as cur:
        cur.execute("SELECT status FROM runs WHERE run_id = %s", (run_id,))
        return cur.fetchone()[0]


def test_a_difference_fails_loudly(sqlite_home, dagster_home):
    """Damage the copy as if it had gone wrong, then let the interrupted migration finish: its
    verification names the differences and the command fails."""
    from dagpg.migrate.errors import VerificationError

    migrate(dagster_home.resolve(), sqlite_home.home, force=True)
    with pg.connection(dagster_home.target) as conn, conn.cursor() as cur:
        cur.execute("UPDATE event_logs SET event = replace(event, 'scheduled or sensed', "
                    "'tampered') WHERE id = (SELECT min(id) FROM event_logs WHERE event LIKE "
                    "'%scheduled or sensed%') RETURNING run_id")
        damaged_run = cur.fetchone()[0]
        cur.execute("DELETE FROM job_ticks WHERE id = (SELECT max(id) FROM job_ticks)")
        cur.execute("UPDATE dagpg.migration_runs SET status = 'verifying'")  # killed there
    # and one captured log: changed in the copy (what the UI shows would differ)
    copied = sorted((dagster_home.home / "storage").glob("*/compute_logs/*.err"))[0]
    copied.write_bytes(copied.read_bytes() + b"tampered\n")
    result = run_cli("migrate-from-sqlite", str(sqlite_home.home), "--yes", "--force")
    assert result.exit_code == 1
    assert "VERIFICATION FAILED: 3 difference(s)" in result.stderr
    assert f"events {damaged_run}#" in result.stderr and "event differs" in result.stderr
    assert (f"compute logs {copied.parent.parent.name}/compute_logs/{copied.stem}: captured "
            "output differs") in result.stderr
    assert result.stderr.splitlines()[-1].startswith(
        "Error: verification found 3 difference(s) between the SQLite and PostgreSQL instances")
    with pg.connection(dagster_home.target) as conn, conn.cursor() as cur:
        cur.execute("SELECT status FROM dagpg.migration_runs")
        assert cur.fetchone()[0] == "failed"
    # the same through the second verification process
    with pytest.raises(VerificationError) as failed:
        migrate(dagster_home.resolve(), sqlite_home.home, force=True, verify_workers=1)
    assert failed.value.report.verification.difference_count == 3
