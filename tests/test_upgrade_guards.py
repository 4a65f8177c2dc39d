"""`dagpg upgrade` on an instance at head (the installed Dagster's), where what goes wrong is not
the migration: PostgreSQL lost midway (issue 13 item 4) and a damaged newest backup (issue 17).

Losing PostgreSQL: the command's session is ended by the server (pg_terminate_backend, as a
restart or crash ends it) while it waits on a lock. One line naming the server, what was being
done and what to do; exit 1; the live database as it was."""

from __future__ import annotations

import os
import subprocess

import pytest

from dagpg import pg
from dagpg.backup import manifest as mf
from tests import faults, pgharness, processes
from tests.backup_support import error_line, flip_byte, materialize, run_cli
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



def databases(server) -> set[str]:
    with pg.connection(server.admin) as conn, conn.cursor() as cur:
        cur.execute("SELECT datname FROM pg_database")
        return {r[0] for r in cur.fetchall()}


def test_a_damaged_newest_backup_is_one_line_naming_a_new_backup(instance, tmp_path):
    """The rehearsal takes no backup name, so "use another backup" would be a dead end: the
    line says to take a new one; no scratch database is left."""
    backups = tmp_path / "backups"
    (name,) = [p.name for p in backups.iterdir()]
    flip_byte(backups / name / "dagster.dump")
    before, listed = databases(instance.server), row_counts(instance)
    result = run_cli("upgrade", "--rehearse", "--dir", str(backups))
    assert result.exit_code == 1, result.output
    assert error_line(result) == (
        f"Error: backup {name}, the newest verified one, failed verification: dagster.dump: "
        "SHA-256 differs from the manifest (the file changed); the rehearsal needs an intact "
        "one: take a new backup (`dagpg backup`) and try again")
    assert databases(instance.server) == before and row_counts(instance) == listed
    assert run_cli("backup", "--dest", str(backups)).exit_code == 0  # as told
    assert run_cli("upgrade", "--rehearse", "--dir", str(backups)).exit_code == 0
