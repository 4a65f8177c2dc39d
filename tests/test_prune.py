"""`dagpg prune` on a history written by real Dagster and its daemon (prune_fixture.py): both tiers,
then Dagster's own APIs show the same catalog as before; the pruned runs and logs are gone; the
runs it must not touch are untouched. Then: killed at random moments, it finishes with the same
result; and bad input is one line, a non-zero exit, nothing deleted.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from dagpg import pg
from dagpg.cli import cli
from dagpg.localdb import free_port
from dagpg.prune import events, prune_history, tables
from dagpg.settings import load_settings
from tests import pgharness, processes, prune_support
from tests.backup_support import error_line

DAGPG = Path(sys.executable).parent / "dagpg"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def template(pg_server, tmp_path_factory):
    return prune_support.shared_template(pg_server, tmp_path_factory)


@pytest.fixture
def history(pg_server, template, tmp_path, monkeypatch):
    clone = prune_support.clone(pg_server, template, tmp_path)
    monkeypatch.setenv("DAGSTER_HOME", str(clone.home))
    monkeypatch.setenv(pgharness.PASSWORD_VAR, pg_server.admin.password or "")
    monkeypatch.delenv("DAGPG_CONFIG", raising=False)
    monkeypatch.delenv("PROJECT_ENV", raising=False)
    yield clone
    pg_server.drop_database(clone.database)


def all_runs(clone) -> dict[str, tuple]:
    return {r[0]: r[1:] for r in prune_support.rows(
        clone.target, "SELECT r.run_id, r.status, r.pipeline_name, t.value FROM runs r "
                      "LEFT JOIN run_tags t ON t.run_id = r.run_id AND t.key = 'fixture/age'")}


def expected(clone, runs: dict[str, tuple]) -> dict[str, set[str]]:
    """What the history's design says each run is (see prune_fixture.py), keep_last_runs=1."""
    h = clone.history
    legacy, daily_01 = h.runs["ancient"]
    (city_1, city_2, east_failed, west_failed, daily_02, daily_03, rainfall, failing_1,
     failing_2, failing_3, note, slot_note) = h.runs["old"]
    check_only, aged_city, aged_east, aged_daily_02, aged_rainfall, aged_note = h.runs["aged"]
    backfill = {r: tag for r, tag in prune_support.rows(
        clone.target, "SELECT run_id, value FROM run_tags WHERE key = 'dagster/backfill'")}
    done_backfill = {r for r, b in backfill.items() if b == h.backfill_done}
    open_backfill = {r for r, b in backfill.items() if b == h.backfill_open}
    by_daemon = {r for r, (_s, job, age) in runs.items()
                 if age == "old" and job == "note_job" and r not in h.runs["old"]
                 and r not in (h.started_run, h.canceling_run)}
    assert len(by_daemon) >= 2 and len(done_backfill) == 1 and len(open_backfill) == 1
    # Both backfills' runs belong to __ASSET_JOB and the daemon launches them in either order:
    # when the finished backfill's run is the newer, it is the newest of its job (keep_last_runs
    # is 1) and stays untouched; otherwise the catalog keeps it.
    (newer,), = prune_support.rows(
        clone.target, "SELECT run_id FROM runs WHERE run_id = ANY(%s) ORDER BY id DESC LIMIT 1",
        (sorted(done_backfill | open_backfill),))
    newest_of_job = done_backfill if newer in done_backfill else set()
    return {
        "deleted": {city_1, east_failed, daily_02, rainfall, failing_1, failing_2, note,
                    slot_note, *by_daemon},
        "kept_for_catalog": {legacy, daily_01, west_failed, daily_03, city_2,
                             *(done_backfill - newest_of_job)},
        "logs_pruned": {aged_city, aged_east, aged_note},
        "untouched": {failing_3, h.started_run, h.canceling_run, *open_backfill, aged_daily_02,
                      aged_rainfall, check_only, *h.runs["recent"], *newest_of_job},
    }


def test_prune_keeps_what_the_catalog_shows_and_deletes_the_rest(history):
    home, target = history.home, history.target
    runs_before = all_runs(history)
    want = expected(history, runs_before)
    assert set().union(*want.values()) == set(runs_before)  # every run has its expectation
    catalog_before = prune_support.catalog_view(home)
    events_before = prune_support.run_events(home, runs_before)
    digest_before = prune_support.digest(target, home)
    (sequence_before, max_id_before), = prune_support.rows(
        target, "SELECT last_value, (SELECT max(id) FROM event_logs) FROM event_logs_id_seq")
    folders_before = {p.name for p in (home / "storage").iterdir()}
    settings = load_settings(dagster_home=home)

    dry = prune_history(history.instance(), settings, dry_run=True)
    assert prune_support.digest(target, home) == digest_before  # a dry run changes nothing
    report = prune_history(history.instance(), settings)  # the template's backup is recent

    assert report.complete and not report.dry_run
    assert report.backup["name"] and report.backup["recent_enough"]
    assert prune_support.catalog_view(home) == catalog_before
    runs_after = all_runs(history)
    assert set(runs_before) - set(runs_after) == want["deleted"]
    assert set(report.plan.kept_for_catalog) == want["kept_for_catalog"]
    reasons = report.plan.kept_for_catalog
    assert reasons[history.history.runs["ancient"][0]] == (
        "newest ASSET_MATERIALIZATION of legacy_report")
    assert reasons[history.history.runs["old"][1]] == (
        "an event of it is referenced by a check execution that stays")
    assert report.runs_deleted == len(want["deleted"])
    assert dry.events_deleted == report.events_deleted and dry.runs_deleted == report.runs_deleted
    assert report.transactions > 20  # batch_rows is 7 in the clone's config.yml

    events_after = prune_support.run_events(home, runs_before)
    bulky = {*events.BULKY_TYPES, None}
    for run_id in want["deleted"]:
        assert events_after[run_id] == [] and run_id not in runs_after
        assert run_id not in {p.name for p in (home / "storage").iterdir()}
    for run_id in want["kept_for_catalog"] | want["logs_pruned"]:
        kept = [e for e in events_before[run_id] if e[1] not in bulky]
        assert events_after[run_id] == kept, run_id  # status, step and asset events stay
        assert len(kept) < len(events_before[run_id])
        assert runs_after[run_id] == runs_before[run_id]
    for run_id in want["untouched"]:
        assert events_after[run_id] == events_before[run_id], run_id
        assert runs_after[run_id] == runs_before[run_id]
    for run_id in folders_before & (want["kept_for_catalog"] | want["logs_pruned"]):
        assert not (home / "storage" / run_id).exists()
    for run_id in folders_before & want["untouched"]:
        assert (home / "storage" / run_id).is_dir()

    # Events by type: exactly what was deleted, as the report says.
    gone = {}
    for run_id, before in events_before.items():
        for event in set(before) - set(events_after[run_id]):
            kind = events.type_name(event[1])
            gone[kind] = gone.get(kind, 0) + 1
    assert dict(report.events_deleted) == gone

    # No stored reference points at a deleted event; ids are never reused.
    dangling = prune_support.rows(target, """
        SELECT 'asset_keys', count(*) FROM asset_keys k WHERE last_materialization IS NOT NULL
          AND NOT EXISTS (SELECT 1 FROM event_logs e
                          WHERE e.id = (k.last_materialization::json->>'storage_id')::bigint)
        UNION ALL SELECT 'check evaluation', count(*) FROM asset_check_executions c
          WHERE c.evaluation_event_storage_id IS NOT NULL AND NOT EXISTS
          (SELECT 1 FROM event_logs e WHERE e.id = c.evaluation_event_storage_id)
        UNION ALL SELECT 'check materialization', count(*) FROM asset_check_executions c
          WHERE c.materialization_event_storage_id IS NOT NULL AND NOT EXISTS
          (SELECT 1 FROM event_logs e WHERE e.id = c.materialization_event_storage_id)
        UNION ALL SELECT 'asset_event_tags', count(*) FROM asset_event_tags t
          WHERE NOT EXISTS (SELECT 1 FROM event_logs e WHERE e.id = t.event_id)
        UNION ALL SELECT 'run_tags', count(*) FROM run_tags t
          WHERE NOT EXISTS (SELECT 1 FROM runs r WHERE r.run_id = t.run_id)
        UNION ALL SELECT 'slots and pending steps', count(*) FROM (
          SELECT run_id FROM concurrency_slots UNION ALL SELECT run_id FROM pending_steps) s
          WHERE s.run_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM runs r
                                                      WHERE r.run_id = s.run_id)""")
    assert dict(dangling) == dict.fromkeys(dict(dangling), 0)
    assert report.slots_freed == 1 and report.rows_deleted["pending_steps"] == 1
    (sequence_after,), = prune_support.rows(target, "SELECT last_value FROM event_logs_id_seq")
    assert sequence_after == sequence_before
    assert dry.runs_logs_pruned == report.runs_logs_pruned == len(
        want["kept_for_catalog"] | want["logs_pruned"])
    again = prune_history(history.instance(), settings)  # nothing left to do, and it says so
    assert again.complete and prune_support.catalog_view(home) == catalog_before
    assert (again.runs_logs_pruned, again.runs_deleted, again.events_total,
            again.transactions) == (0, 0, 0, 0)
    _a_new_materialization_fires_the_sensor_once(home, max_id_before)


def _a_new_materialization_fires_the_sensor_once(home, max_id_before: int) -> None:
    """The asset sensor's stored cursor (an event id) still means "seen up to here": after the
    prune it reports the newest parcels materialization, then the new one, never an old one."""
    import dagster as dg

    from tests import prune_fixture_defs as d

    with dg.DagsterInstance.from_config(str(home)) as instance:
        (state,) = [s for s in instance.all_instigator_state()
                    if s.instigator_name == "parcels_sensor"]
        cursor = state.instigator_data.cursor
        newest = instance.fetch_materializations(dg.AssetKey("parcels"), limit=1).records[0]
        result = d.defs.resolve_job_def("city_job").execute_in_process(instance=instance)
        new = instance.fetch_materializations(dg.AssetKey("parcels"), limit=1).records[0]
        assert new.storage_id > max_id_before > newest.storage_id > int(cursor)
        context = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=d.defs)
        requests = list(d.parcels_sensor(context) or [])
        assert [r.run_key for r in requests] == [f"parcels-{cursor}"]
        assert context.cursor == str(new.storage_id)
        assert result.success


def test_dry_run_reports_and_changes_nothing(history):
    want = expected(history, all_runs(history))
    before = prune_support.digest(history.target, history.home)
    result = CliRunner().invoke(cli, ["prune", "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["dry_run"] and report["complete"]
    assert report["runs_deleted"] == len(want["deleted"])
    assert report["runs_kept_for_catalog"] == len(want["kept_for_catalog"])
    assert report["events_deleted"]["LOG_MESSAGE"] > 0
    assert report["estimated_bytes"] > report["event_payload_bytes"] > 0
    assert report["compute_logs"]["folders_deleted"] > 0  # would delete
    assert prune_support.digest(history.target, history.home) == before


def _run_prune(home, env, *, kill_after=None, after_plan=False) -> tuple[bool, float, float]:
    """`dagpg prune --yes` in a child process, SIGKILLed `kill_after` seconds after its start
    (or after it printed its plan) unless it finished first. Returns (killed, seconds to its
    plan, seconds to its end)."""
    started = time.monotonic()
    proc = subprocess.Popen([str(DAGPG), "prune", "--yes"], env={**env, "DAGSTER_HOME": str(home)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    planned: list[float] = []

    def read():
        for line in proc.stderr:
            lines.append(line)
            if "plan:" in line:
                planned.append(time.monotonic() - started)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if after_plan:
        processes.wait_for(lambda: planned or proc.poll() is not None, timeout=60,
                           what="the prune's plan", interval=0.01)
    try:
        proc.wait(120 if kill_after is None else kill_after)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        reader.join(5)
        return True, (planned or [0.0])[0], time.monotonic() - started
    reader.join(5)
    assert proc.returncode == 0, "".join(lines)
    return False, (planned or [0.0])[0], time.monotonic() - started


SLOW_DELETES = """
    CREATE FUNCTION slow_delete() RETURNS trigger LANGUAGE plpgsql AS
      $$ BEGIN PERFORM pg_sleep(0.008); RETURN OLD; END $$;
    CREATE TRIGGER slow_delete BEFORE DELETE ON event_logs
      FOR EACH ROW EXECUTE FUNCTION slow_delete()"""


def test_killed_at_random_moments_it_finishes_with_the_same_result(pg_server, template, tmp_path):
    """Two transactions per event (batch_rows 2), and each deleted event costs 8 ms (a trigger in
    both copies: a slow, busy server), so that the kills land between many commits."""
    env = {**os.environ, pgharness.PASSWORD_VAR: pg_server.admin.password or ""}
    env.pop("DAGPG_CONFIG", None)
    whole = prune_support.clone(pg_server, template, tmp_path / "whole", batch_rows=2)
    killed = prune_support.clone(pg_server, template, tmp_path / "killed", batch_rows=2)
    for copy in (whole, killed):
        prune_support.rows(copy.target, SLOW_DELETES + "; SELECT 1")
    try:
        _, to_plan, to_end = _run_prune(whole.home, env)
        work = to_end - to_plan
        expected_state = prune_support.digest(whole.target, whole.home)
        initial = prune_support.digest(killed.target, killed.home)
        assert expected_state != initial

        seed = random.randrange(1_000_000)
        rng = random.Random(seed)
        states = [initial]
        while len(states) <= 12:
            # Odd kills: anywhere from its start to its plan (starting, planning, or deleting
            # when a former kill left little to do); even kills: early in its deleting.
            after_plan = len(states) % 2 == 0
            delay = rng.uniform(0, work * 0.15) if after_plan else rng.uniform(0, to_plan)
            was_killed, _, _ = _run_prune(killed.home, env, kill_after=delay,
                                          after_plan=after_plan)
            if not was_killed:
                break
            states.append(prune_support.digest(killed.target, killed.home))
        _run_prune(killed.home, env)  # and once more, to the end
        final = prune_support.digest(killed.target, killed.home)
    finally:
        pg_server.drop_database(whole.database)
        pg_server.drop_database(killed.database)
    kills = len(states) - 1
    changed = sum(1 for a, b in zip(states, states[1:], strict=False) if a != b)
    print(f"seed {seed}: {kills} kills, {changed} of them after some batches committed; "
          f"uninterrupted: {to_plan:.1f}s to plan, {work:.1f}s deleting")
    assert final == expected_state, f"seed {seed}"
    assert kills >= 10, f"seed {seed}: only {kills} kills landed before the prune finished"
    assert changed >= 3, f"seed {seed}: the kills hardly ever interrupted real work"


def test_a_table_locked_by_another_vacuum_is_left_to_it(history):
    """VACUUM needs a lock another VACUUM holds (autovacuum's anti-wraparound pass does not give
    way): after lock_timeout that table is left to it, the prune is still complete."""
    with pg.connection(history.target) as locker, locker.cursor() as cur:
        cur.execute("LOCK TABLE run_tags IN SHARE UPDATE EXCLUSIVE MODE")  # what VACUUM takes
        report = prune_history(history.instance(), load_settings(dagster_home=history.home))
    assert report.complete and report.runs_deleted > 0
    assert set(report.vacuumed) == set(report.sizes_before) - {"run_tags"}
    assert report.notes == ["VACUUM skipped run_tags: another session held its lock past "
                            "lock_timeout; autovacuum will do it"]


def test_killed_in_its_vacuum_the_next_prune_vacuums(history):
    """SIGKILLed while its VACUUM of the first table waits for a lock (every delete committed):
    the server finishes that one statement, the other tables are left. The next prune finds
    nothing to delete, and still owes them their VACUUM (ANALYZE)."""
    config = history.home.parent / "config" / "config.yml"
    config.write_text(config.read_text().replace("batch_rows:", "lock_timeout_ms: 120000\n"
                                                 "    batch_rows:"))
    waiting = ("SELECT 1 FROM pg_stat_activity WHERE application_name = 'dagpg prune' "
               "AND wait_event_type = 'Lock' AND query LIKE 'VACUUM%%'")
    with pg.connection(history.target) as locker, locker.cursor() as cur:
        cur.execute("LOCK TABLE event_logs IN SHARE UPDATE EXCLUSIVE MODE")  # what VACUUM takes
        proc = subprocess.Popen([str(DAGPG), "prune", "--yes"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            processes.wait_for(
                lambda: prune_support.rows(history.target, waiting) or proc.poll() is not None,
                timeout=120, what="the prune's VACUUM waiting for its lock", interval=0.05)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
    assert proc.returncode == -signal.SIGKILL

    def vacuumed() -> set[str]:  # by hand (VACUUM), not by autovacuum
        return {t for (t,) in prune_support.rows(
            history.target, "SELECT relname FROM pg_stat_user_tables WHERE last_vacuum IS NOT "
                            "NULL AND relname = ANY(%s)", (list(tables.TOUCHED),))}

    assert "runs" not in vacuumed() and "run_tags" not in vacuumed()
    report = prune_history(history.instance(), load_settings(dagster_home=history.home))
    assert report.complete and report.transactions == 0
    assert set(report.vacuumed) == set(tables.TOUCHED) == vacuumed()
    again = prune_history(history.instance(), load_settings(dagster_home=history.home))
    assert again.vacuumed == []  # paid: a prune with nothing to do does not VACUUM


def test_bad_input_is_one_line_and_deletes_nothing(history, pg_server):
    before = prune_support.digest(history.target, history.home)
    config = history.home.parent / "config" / "config.yml"
    good = config.read_text()

    def prune(*args):
        result = CliRunner().invoke(cli, ["prune", "--yes", *args])
        return result.exit_code, error_line(result)

    config.write_text(good.replace("logs_days: 30", "logs_days: 0"))
    assert prune() == (2, f"Error: {config}: dagpg.retention.logs_days: input should be greater "
                          "than 0, got 0 (PROJECT_ENV=dev)")
    config.write_text(good.replace("keep_last_runs: 1", "keep_last_runs: some"))
    assert prune()[1].endswith("dagpg.retention.keep_last_runs: input should be a valid "
                               "integer, got 'some' (PROJECT_ENV=dev)")
    config.write_text(good)
    assert prune("--older-than", "last spring") == (
        2, "Error: --older-than 'last spring': not an age or a date; give days (30), a "
           "number with a unit (12h, 30d, 8w) or a date (2025-01-31)")

    prune_support.rows(history.target, "DELETE FROM dagpg.backups RETURNING name")
    code, line = prune()
    assert code == 1 and line.startswith("Error: there is no verified backup in the catalog")
    assert line.endswith("run `dagpg backup` first, or pass --force to prune without one")
    # Without --yes from a script (stdin not a terminal): the same refusal, not a question.
    result = CliRunner().invoke(cli, ["prune", "--json"], input="")
    assert (result.exit_code, error_line(result)) == (code, line)

    # A table locked by another session past lock_timeout while planning: one line saying so.
    with pg.connection(history.target) as locker, locker.cursor() as cur:
        cur.execute("LOCK TABLE runs IN ACCESS EXCLUSIVE MODE")
        code, line = prune("--force")
    assert code == 1 and line.startswith(
        "Error: prune stopped before it was done: another session held a table it reads longer "
        "than dagpg.retention.lock_timeout_ms = 2000 (canceling statement due to lock timeout)")

    yaml = history.home / "dagster.yaml"
    dead = free_port()
    yaml.write_text(re.sub(r"port: \d+", f"port: {dead}", yaml.read_text()))
    assert prune("--force") == (
        1, f"Error: cannot connect to PostgreSQL at 127.0.0.1:{dead}/{history.database}: "
           "connection refused; is the server running? (for the local server: `dagpg db status`)")
    assert prune_support.digest(history.target, history.home) == before
