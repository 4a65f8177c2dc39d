"""The kit's one progress type and its one way to tell a missing table, on real databases."""

from __future__ import annotations

import logging
import pickle
import sqlite3

from dagpg import pg
from dagpg.dbtables import has_table
from dagpg.heartbeats import read_heartbeats
from dagpg.progress import Progress, reporter


def test_a_counted_step_reads_as_text_and_keeps_its_numbers():
    step = Progress("copying", 120, 500, "rows")
    assert step == "copying: 120/500 rows"
    assert (step.phase, step.done, step.total, step.unit) == ("copying", 120, 500, "rows")
    assert Progress("scanning", 3, 0, "files") == "scanning: 3 files"  # total unknown
    again = pickle.loads(pickle.dumps(step))
    assert (again, again.phase, again.done, again.total) == (step, "copying", 120, 500)


def test_a_step_goes_to_a_logger_as_its_text(caplog):
    # Dagster's context.log.info and the CLI's printer take the same callback.
    caplog.set_level(logging.INFO, logger="dagpg.test")
    say = reporter(logging.getLogger("dagpg.test").info)
    say(Progress("events", 2, 4, "shards"))
    say("dumping")
    assert caplog.messages == ["events: 2/4 shards", "dumping"]
    reporter(None)("dropped without a callback")  # no error, nothing to see


def test_has_table_on_sqlite(tmp_path):
    conn = sqlite3.connect(tmp_path / "runs.db")
    try:
        assert not has_table(conn, "daemon_heartbeats")
        assert read_heartbeats(conn) == []
        conn.execute("CREATE TABLE daemon_heartbeats (daemon_type TEXT, daemon_id TEXT, "
                     "timestamp TEXT)")
        conn.execute("INSERT INTO daemon_heartbeats VALUES ('SCHEDULER', 'a', "
                     "'2026-01-01 00:00:00')")
        assert has_table(conn, "daemon_heartbeats")
        assert has_table(conn.cursor(), "daemon_heartbeats")
        assert [h.daemon_type for h in read_heartbeats(conn)] == ["SCHEDULER"]
    finally:
        conn.close()


def test_has_table_on_postgres_leaves_the_transaction_usable(empty_dagster_home):
    with pg.connection(empty_dagster_home.target) as conn:
        assert not has_table(conn, "daemon_heartbeats")
        assert not has_table(conn, "dagpg.backups")  # a schema that does not exist either
        assert read_heartbeats(conn) == []
        with conn.cursor() as cur:  # nothing failed, so the transaction goes on
            cur.execute("CREATE SCHEMA dagpg; CREATE TABLE dagpg.backups (name text)")
            assert has_table(cur, "dagpg.backups")
        assert has_table(conn, "dagpg.backups")
        assert not has_table(conn, "backups")  # not on the search path
        conn.rollback()
