"""`dagpg db up|down|status|url`: a real project-local PostgreSQL, started and stopped."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from dagpg import localdb, pg
from dagpg.cli import cli
from dagpg.errors import AuthenticationError
from dagpg.instance import PgTarget, resolve_instance
from dagpg.localdb import _hand_to_server_user, free_port
from dagpg.pgbin import find_program
from tests import pgharness

PASSWORD = "first-pass'word"


@pytest.fixture
def local_home(monkeypatch):
    """A DAGSTER_HOME for `dagpg db` in a folder the server's OS user can reach."""
    try:
        find_program("initdb")
    except Exception as exc:  # noqa: BLE001
        pgharness.unavailable(str(exc))
    root = Path(tempfile.mkdtemp(prefix="dagpg-localdb-"))
    root.chmod(0o755)
    _hand_to_server_user(root)
    home = root / "dagster_home"
    port = free_port()
    target = PgTarget(host="localhost", port=port, database="dagster", user="dagster")
    pgharness.write_dagster_home(home, target)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", PASSWORD)
    monkeypatch.delenv("DAGPG_PGDATA", raising=False)
    yield home
    CliRunner().invoke(cli, ["db", "down", "--silent"])
    shutil.rmtree(root, ignore_errors=True)


def db(*args):
    return CliRunner().invoke(cli, ["db", *args])


def test_up_is_idempotent_and_serves_what_dagster_yaml_names(local_home):
    first = db("up", "--json")
    assert first.exit_code == 0, first.output
    status = json.loads(first.output)
    assert status["running"] is True and status["host"] == "127.0.0.1"
    assert Path(status["data_dir"]) == local_home / "postgres" / "data"
    assert PASSWORD not in first.output

    target = resolve_instance(local_home).target
    with pg.connection(target) as conn, conn.cursor() as cur:
        cur.execute("SELECT current_user, current_database(), inet_server_addr()::text")
        assert cur.fetchone() == ("dagster", "dagster", "127.0.0.1/32")
        cur.execute("SHOW password_encryption")
        assert cur.fetchone()[0] == "scram-sha-256"
        # may create scratch databases (`dagpg backups verify --restore-test`), nothing more
        cur.execute("SELECT rolcreatedb, rolsuper FROM pg_roles WHERE rolname = current_user")
        assert cur.fetchone() == (True, False)

    again = db("up", "--json")
    assert again.exit_code == 0
    assert json.loads(again.output)["pid"] == status["pid"]

    # No password anywhere in the cluster's files.
    for path in (local_home / "postgres").rglob("*"):
        if path.is_file() and path.stat().st_size < 5_000_000:
            assert PASSWORD.encode() not in path.read_bytes(), path


def test_changed_password_becomes_the_roles_password(local_home, monkeypatch):
    first = db("up", "--silent")
    assert (first.exit_code, first.output) == (0, "")  # --silent: nothing, not even the table
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", "second-password")
    assert db("up", "--silent").exit_code == 0
    target = resolve_instance(local_home).target
    pg.connect(target).close()
    with pytest.raises(AuthenticationError):
        pg.connect(PgTarget(**{**target.__dict__, "password": PASSWORD}), retries=0)


def test_status_down_and_url(local_home):
    stopped = db("status")
    assert stopped.exit_code == 3
    assert "not created" in stopped.output
    assert db("up", "--silent").exit_code == 0
    running = db("status", "--json")
    assert running.exit_code == 0 and json.loads(running.output)["running"] is True
    url = db("url")
    port = resolve_instance(local_home).target.port
    assert url.output.strip() == f"postgresql://dagster@localhost:{port}/dagster"
    down = db("down")
    assert down.exit_code == 0 and "stopped" in down.output
    assert db("status").exit_code == 3
    assert (db("down", "--silent").exit_code, db("down", "--silent").output) == (0, "")
    assert db("up", "--silent").exit_code == 0  # data kept: starts again without initdb
    pg.connect(resolve_instance(local_home).target).close()


def test_backups_list_works_while_the_server_is_stopped(local_home, tmp_path):
    assert db("up", "--silent").exit_code == 0
    dest = tmp_path / "backups"
    made = CliRunner().invoke(cli, ["backup", "--dest", str(dest), "--json", "--silent"])
    assert made.exit_code == 0, made.output
    name = json.loads(made.stdout)["name"]
    assert db("down", "--silent").exit_code == 0
    assert db("status").exit_code == 3  # stopped, by PostgreSQL's own pg_ctl

    listed = CliRunner().invoke(cli, ["backups", "list", "--dir", str(dest)])
    assert listed.exit_code == 0, listed.output
    port = resolve_instance(local_home).target.port
    lines = listed.stdout.splitlines()
    assert lines[0] == f"1 backup in {dest}"
    assert lines[2].split()[:3] == [name, "ok", "cli"]
    assert lines[-1] == (
        f"Note: catalog unavailable (cannot connect to PostgreSQL at localhost:{port}/dagster: "
        "connection refused; is the server running? (for the local server: `dagpg db status`))")


def test_port_in_use_is_a_clear_error(local_home):
    port = resolve_instance(local_home, require_password=False).target.port
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", port))
        blocker.listen()
        result = db("up")
    assert result.exit_code == 1
    yaml_path = local_home / "dagster.yaml"
    assert result.output.splitlines()[-1] == (
        f"Error: port {port} on 127.0.0.1 is already in use by another program; stop it, or "
        f"set a free port in {yaml_path} (storage.postgres.postgres_db.port) and run "
        "`dagpg db up` again"
    )
    assert not (local_home / "postgres" / "data").exists()


def test_remote_host_is_refused(local_home):
    text = (local_home / "dagster.yaml").read_text().replace("hostname: localhost",
                                                            "hostname: db.example.org")
    (local_home / "dagster.yaml").write_text(text)
    result = db("up")
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"Error: {local_home / 'dagster.yaml'} points at host 'db.example.org'; `dagpg db` runs "
        "a server for localhost only: use that server as it is, or set hostname: localhost"
    )


def test_up_needs_the_password(local_home, monkeypatch):
    monkeypatch.delenv("DAGSTER_PG_PASSWORD")
    result = db("up")
    assert result.exit_code == 2
    assert "environment variable DAGSTER_PG_PASSWORD is not set" in result.output


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the server to another OS user")
def test_a_home_the_server_user_cannot_enter_keeps_its_cluster_under_var_lib(monkeypatch):
    """A checkout under /root (0700): the cluster goes where `postgres` can reach it, found
    again by every later command; a reachable home keeps <DAGSTER_HOME>/postgres."""
    monkeypatch.delenv("DAGPG_PGDATA", raising=False)
    base = Path(tempfile.mkdtemp(prefix="dagpg-localdb-"))
    try:
        base.chmod(0o755)
        project = base / "project"
        target = PgTarget(host="localhost", port=free_port(), database="dagster", user="dagster")
        home = pgharness.write_dagster_home(project / "dagster_home", target)

        def cluster_root() -> Path:
            return localdb.cluster_for(resolve_instance(home, require_password=False)).root

        project.chmod(0o755)
        assert cluster_root() == home / "postgres"
        project.chmod(0o700)
        root = cluster_root()
        assert root.parent == Path(localdb.SERVER_ROOT) and root.name.startswith("project-")
        assert cluster_root() == root
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _time_wait_on(port: int) -> bool:
    """A TCP socket of 127.0.0.1:`port` in TIME_WAIT (state 06 in /proc/net/tcp)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        if local == f"0100007F:{port:04X}" and state == "06":
            return True
    return False


def test_up_right_after_a_stop_and_after_a_kill(local_home):
    """Issue 13, items 2 and 4: `db up` right after `db down` (the stopped server's
    connections linger in TIME_WAIT) and right after `kill -9` of the postmaster (its children
    still hold its shared memory, it may not be reaped yet) starts a new server."""
    from tests import faults, processes

    assert db("up", "--silent").exit_code == 0
    target = resolve_instance(local_home).target
    port = target.port
    # A client connected while the server stops: the server's side closes first, the client
    # reads the end and closes too, which leaves the server's side in TIME_WAIT on `port`.
    client = socket.create_connection(("127.0.0.1", port))
    assert db("down", "--silent").exit_code == 0
    assert client.recv(1) == b""
    client.close()
    assert _time_wait_on(port), "the stop left no TIME_WAIT socket; nothing was tested"
    again = db("up", "--silent")
    assert again.exit_code == 0, again.output
    pg.connect(target).close()

    busy = pg.connect(target)  # a backend busy when its postmaster dies
    with busy.cursor() as cur:
        cur.execute("SET statement_timeout = 0")
    sleeper = subprocess.Popen(  # keeps a second backend in a query for a few seconds
        [str(find_program("psql").path), "-X", "-q", "-c", "SELECT pg_sleep(3)"],
        env={**os.environ, **target.libpq_env()}, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        processes.wait_for(lambda: _active_sleeps(target), timeout=30, what="pg_sleep to run")
        postmaster = localdb.cluster_for(resolve_instance(local_home)).status().pid
        faults.sigkill(postmaster)
        restarted = db("up", "--json")
        assert restarted.exit_code == 0, restarted.output
        assert json.loads(restarted.output)["pid"] != postmaster
        pg.connect(target).close()
    finally:
        sleeper.kill()
        sleeper.wait()
        busy.close()


def _active_sleeps(target) -> bool:
    with pg.connection(target) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%'")
        return cur.fetchone()[0] > 0
