"""Kill `dagpg migrate-from-sqlite` (SIGKILL) at several points, run it again each time: the final
state equals that of a migration that was never interrupted, with no duplicates."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from dagpg import pg
from dagpg.migrate import migrate
from dagpg.migrate.run import SCRATCH_PREFIX
from tests import pgharness, sqlite_fixtures
from tests.processes import BIN

pytestmark = pytest.mark.slow

BATCH = 5  # tiny units, so that there are many points to be killed at
# Kill after this many progress lines of each attempt, or at the first line starting so (while
# Dagster creates the target schema; during verification); None lets the last attempt finish.
KILL_AFTER = ["… schema", 3, 12, 30, 45, "… verify", None]
SKIP_TABLES = {"alembic_version", "secondary_indexes", "daemon_heartbeats"}


@pytest.fixture(scope="session")
def sqlite_home(tmp_path_factory):
    return sqlite_fixtures.shared_home(tmp_path_factory)


def digest(target) -> dict[str, str]:
    """Content of every Dagster table (ordered by id) and where each sequence stands."""
    out = {}
    with pg.connection(target) as conn, conn.cursor() as cur:
        cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")
        for (table,) in cur.fetchall():
            if table in SKIP_TABLES:
                continue
            cur.execute(f'SELECT count(*), md5(coalesce(string_agg(t::text, E\'\\n\' '
                        f'ORDER BY t.id), \'\')) FROM "{table}" t')
            count, md5 = cur.fetchone()
            out[table] = f"{count} rows, md5 {md5}"
        cur.execute("SELECT sequencename, last_value FROM pg_sequences "
                    "WHERE schemaname = 'public' ORDER BY 1")
        for name, value in cur.fetchall():
            if not name.startswith(tuple(SKIP_TABLES)):
                out[f"sequence {name}"] = str(value)
    return out


def attempt(source: Path, home: Path, kill_after, log: list[str], pids: list[int]
            ) -> int | None:
    """Run the CLI; SIGKILL it after `kill_after` progress lines (or at a line starting so)."""
    proc = subprocess.Popen(
        [str(BIN / "dagpg"), "migrate-from-sqlite", str(source), "--dagster-home", str(home),
         "--yes", "--force", "--batch-rows", str(BATCH)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    pids.append(proc.pid)
    lines = 0
    for line in proc.stderr:
        log.append(line.rstrip())
        lines += line.startswith("… ")
        if kill_after is not None and (lines == kill_after if isinstance(kill_after, int)
                                       else line.startswith(kill_after)):
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
            log.append(f"--- killed after {lines} progress lines ---")
            return None
    return proc.wait(60)


def test_killed_at_several_points_ends_like_an_uninterrupted_run(sqlite_home, dagster_home,
                                                                  pg_server, tmp_path):
    migrate(dagster_home.resolve(), sqlite_home.home, force=True, batch_rows=BATCH)
    expected = digest(dagster_home.target)

    database = pg_server.create_database()
    try:
        target = pg_server.target(database)
        home = pgharness.write_dagster_home(tmp_path / "killed_home", target)
        log: list[str] = []
        pids: list[int] = []
        codes = [attempt(sqlite_home.home, home, kill_after, log, pids)
                 for kill_after in KILL_AFTER]
        assert codes[:-1] == [None] * (len(KILL_AFTER) - 1), "\n".join(log)
        assert codes[-1] == 0, "\n".join(log)
        assert digest(target) == expected
        sqlite_fixtures.assert_one_migration_copied_every_event_once(target)
        # the killed attempts' scratch folders were removed by the next attempt
        left = [d for d in Path(tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*")
                if (d / "pid").is_file() and int((d / "pid").read_text()) in pids]
        assert left == []
        # the kills landed in different phases
        phases = {log[i - 1].split()[1].rstrip(":") for i, line in enumerate(log)
                  if line.startswith("--- killed")}
        assert {"schema", "tables", "events", "verify"} <= phases, phases
    finally:
        pg_server.drop_database(database)
    assert sqlite_home.unchanged()
