"""`dagpg migrate-from-sqlite` against faults the fault campaign found (issue 13), on a small
SQLite instance written by real Dagster: an asset check that evaluated a materialization which
was wiped since, and PostgreSQL stopped with `-m immediate` in the middle of the work.
"""

from __future__ import annotations

import os
import subprocess

import dagster as dg
import pytest

from dagpg import pg
from dagpg.migrate import migrate
from tests import faults, pgharness, processes, sqlite_fixtures
from tests.processes import BIN

pytestmark = pytest.mark.slow


@dg.asset
def before() -> int:
    return 1


@dg.asset(deps=[before])
def wiped() -> int:
    return 2


@dg.asset_check(asset=wiped)
def wiped_is_there() -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=True)


@pytest.fixture(scope="module")
def small_source(tmp_path_factory):
    """One run: `before`, then `wiped` and its check; then `wiped` is wiped, so index.db loses
    its materialization while the run's shard (and the check's evaluation event, pointing at
    it) keep it. Returns (home, run id)."""
    home = tmp_path_factory.mktemp("small_source") / "dagster_home"
    sqlite_fixtures.write_sqlite_yaml(home)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        run_id = dg.materialize([before, wiped, wiped_is_there], instance=instance).run_id
        instance.wipe_assets([dg.AssetKey("wiped")])
    return home, run_id


def test_a_check_points_at_the_materialization_it_evaluated_even_once_wiped(small_source,
                                                                            dagster_home):
    """Issue 13, item 7: the evaluation's pointer names the wiped materialization (still in the
    run's shard, so in the target), not the event before it (`before`'s materialization)."""
    home, run_id = small_source
    report = migrate(dagster_home.resolve(), home, force=True)
    assert report.verification.ok
    with dg.DagsterInstance.from_config(str(dagster_home.home)) as target:
        records = {r.storage_id: r.event_log_entry
                   for r in target.get_records_for_run(run_id, limit=1000).records}
    (evaluation,) = [e for e in records.values()
                     if e.dagster_event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION]
    pointed = records[evaluation.dagster_event.event_specific_data
                      .target_materialization_data.storage_id]
    assert pointed.dagster_event_type == dg.DagsterEventType.ASSET_MATERIALIZATION
    assert pointed.dagster_event.asset_key == dg.AssetKey("wiped")


def test_postgres_stopping_mid_migration_is_one_line_and_the_rerun_finishes(small_source,
                                                                             tmp_path):
    """Issue 13, items 4 and 1: `pg_ctl stop -m immediate` (a server of the test's own) while
    Dagster creates the target schema, then again while events are copied: each time one line
    naming what to do, exit 1; started again, the same command finishes (the half-created
    schema repaired)."""
    home, _ = small_source
    server, root = pgharness.start_throwaway()
    try:
        target = server.target(server.create_database("dagster"))
        faults.notice_dead_clients(target)
        target_home = pgharness.write_dagster_home(tmp_path / "target", target)
        env = {**os.environ, pgharness.PASSWORD_VAR: server.admin.password}
        argv = [str(BIN / "dagpg"), "migrate-from-sqlite", str(home), "--dagster-home",
                str(target_home), "--yes", "--force", "--batch-rows", "5"]

        def crash_when(waiting_in: str, ready=lambda proc: None) -> str:
            """Run the migration; once it waits inside `waiting_in`, stop the server at once.
            Returns the migration's last line on stderr."""
            proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, text=True)
            seen = ready(proc) or ""
            processes.wait_for(lambda: faults.waiting_sessions(target, waiting_in),
                               timeout=180, what=f"the migration to wait in {waiting_in}",
                               proc=proc)
            faults.stop_immediately(server.cluster)
            stderr = seen + proc.stderr.read()
            assert proc.wait(120) == 1, stderr
            server.cluster.up()
            assert "Traceback" not in stderr, stderr
            return stderr.splitlines()[-1]

        with faults.creation_blocked(target, "concurrency_slots"):
            line = crash_when("CREATE TABLE concurrency_slots")
        assert line.startswith(f"Error: lost the connection to PostgreSQL at {target.where} "
                               "while upgrading the schemas (")
        assert line.endswith("); check that the server runs (for the local server: `dagpg db "
                             "status`, `dagpg db up`), then run the same command again")

        locker = pg.connect(target)

        def lock_events_once_tables_are_copied(proc) -> str:
            """The schema is repaired and the tables phase begins: hold event_logs."""
            seen = []
            for line in proc.stderr:
                seen.append(line)
                if line.startswith("… tables"):
                    with locker.cursor() as cur:
                        cur.execute("LOCK TABLE event_logs IN ACCESS EXCLUSIVE MODE")
                    return "".join(seen)
            raise AssertionError("no tables phase:\n" + "".join(seen))

        try:
            line = crash_when("COPY event_logs", lock_events_once_tables_are_copied)
        finally:
            locker.close()
        assert line.startswith(f"Error: lost the connection to PostgreSQL at {target.where} "
                               "while copying events (")

        finished = subprocess.run([*argv, "--silent"], env=env, capture_output=True, text=True,
                                  timeout=300)
        assert finished.returncode == 0, finished.stderr
        assert finished.stdout.startswith("Migrated: ")
    finally:
        server.cluster.destroy()
        subprocess.run(["rm", "-rf", str(root)], check=False)


def test_a_target_missing_a_table_is_rebuilt_before_the_copy(small_source, dagster_home):
    """Issue 13, item 1, as reported: `dagpg db upgrade`, `DROP TABLE concurrency_slots`, then
    migrate. The schema (stamped at head, holding no history) is rebuilt, then copied into."""
    home, run_id = small_source
    with pg.connection(dagster_home.target) as conn, conn.cursor() as cur:
        cur.execute("DROP TABLE concurrency_slots")
    report = migrate(dagster_home.resolve(), home, force=True)
    assert report.verification.ok
    assert report.notes == ["Dagster's schema was incomplete (table concurrency_slots) and held "
                            "no history: rebuilt"]
    with pg.connection(dagster_home.target) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM runs WHERE run_id = %s", (run_id,))
        assert cur.fetchone()[0] == 1
