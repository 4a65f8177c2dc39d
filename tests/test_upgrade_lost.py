"""`dagpg upgrade` and `dagpg db move` losing PostgreSQL midway (issue 13 item 4, issue 17): the
command's session is ended by the server (pg_terminate_backend, as a restart or crash ends it)
while it waits on a lock. One line naming the server, what was being done and what to do; exit 1;
the live database as it was."""

from __future__ import annotations

import os
import subprocess

import pytest

from dagpg import pg
from dagpg.backup import manifest as mf
from tests import faults, pgharness, processes
from tests.backup_support import materialize, run_cli
from tests.processes import BIN

pytestmark = pytest.mark.slow


@pytest.fixture
def instance(dagster_home, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    materialize(dagster_home.home, runs=1)
    result = run_cli("backup", "--dest", str(tmp_path / "backups"), "--json")
    assert result.exit_code == 0, result.output
    return dagster_home


def row_counts(instance) -> dict[str, int]:
    with pg.connection(instance.target) as conn, conn.cursor() as cur:
        return mf.row_counts(cur)


def run_losing_the_connection(instance, args: list[str], table: str) -> tuple[int, str]:
    """Run `dagpg *args` while `table` is locked; once its session waits on the lock, end that
    session from the server side. Returns the exit code and stderr."""
    target = instance.target
    env = {**os.environ, "DAGSTER_HOME": str(instance.home),
           pgharness.PASSWORD_VAR: instance.server.admin.password or ""}
    locker = pg.connect(target)
    try:
        with locker.cursor() as cur:
            cur.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        proc = subprocess.Popen([str(BIN / "dagpg"), *args], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        waiting = processes.wait_for(lambda: faults.waiting_sessions(target, table),
                                     timeout=120, what=f"a session waiting on {table}",
                                     proc=proc)
        with pg.connection(instance.server.admin, autocommit=True) as admin, \
                admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid",
                        (waiting,))
        stderr = proc.communicate(timeout=180)[1]
    finally:
        locker.close()
    return proc.returncode, stderr


@pytest.mark.parametrize(("args", "doing"), [
    (["upgrade", "--rehearse"], "rehearsing the upgrade"),
    (["upgrade", "--apply", "--force"], "applying the upgrade"),
])
def test_a_lost_connection_names_the_server_and_what_was_being_done(instance, tmp_path, args,
                                                                    doing):
    before = row_counts(instance)
    code, stderr = run_losing_the_connection(
        instance, [*args, "--dir", str(tmp_path / "backups")], "alembic_version")
    assert code == 1, stderr
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if not ln.startswith("… ")]
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"Error: lost the connection to PostgreSQL at "
                               f"{instance.target.where} while {doing} ("), lines[0]
    assert "connection already closed" not in lines[0], lines[0]
    assert row_counts(instance) == before

