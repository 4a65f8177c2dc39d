"""`dagpg verify` against real dagster-webserver and dagster-daemon processes on PostgreSQL.

One webserver (under the path prefix /dagster, standing in for the public URL too) and one
daemon share the module. Each test gets them running: a test that stops the daemon leaves it to
the `stack` fixture to start a new one for the next test that runs.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from dagpg import pg
from dagpg.cli import cli
from dagpg.instance import resolve_instance
from dagpg.localdb import free_port
from dagpg.render.servy import encode_environment, service_xml
from dagpg.verify.database import required_daemon_types
from tests import pgharness, processes

pytestmark = pytest.mark.slow

DEFINITIONS = Path(__file__).resolve().parent / "verify_definitions.py"


@dataclass
class Stack:
    root: Path
    home: Path
    database: str
    other_home: Path  # a second instance: its own database, no services
    other_database: str
    workspace: Path
    port: int
    password: str
    server: pgharness.PgServer
    daemon: object

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/dagster"

    def env(self, **extra: str | None) -> dict[str, str | None]:
        return {"DAGSTER_HOME": str(self.home), "DAGSTER_PG_PASSWORD": self.password,
                "DAGPG_CONFIG": None, "PROJECT_ENV": None, **extra}


def write_workspace(path: Path) -> Path:
    path.write_text(f"load_from:\n  - python_file:\n      relative_path: {DEFINITIONS}\n"
                    "      attribute: defs\n", encoding="utf-8")
    return path


def graphql_daemons(url: str) -> list[dict]:
    query = "{ instance { daemonHealth { allDaemonStatuses { daemonType lastHeartbeatTime } } } }"
    request = urllib.request.Request(f"{url}/graphql", data=json.dumps({"query": query}).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            data = json.loads(resp.read())["data"]
    except OSError:
        return []
    return data["instance"]["daemonHealth"]["allDaemonStatuses"]


def start_daemon(stack: Stack) -> object:
    """A daemon for the stack's instance (wait_for_daemon tells when it is up)."""
    daemon = processes.start_daemon(stack.home, stack.root / "logs",
                                    env={"DAGSTER_PG_PASSWORD": stack.password},
                                    workspace=stack.workspace)
    daemon.started_at = time.time()
    return daemon


def wait_for_daemon(stack: Stack, daemon) -> object:
    """Once the webserver shows a heartbeat of every required daemon since it started."""
    processes.wait_for(
        lambda: (statuses := graphql_daemons(stack.url))
        and all((s["lastHeartbeatTime"] or 0) > daemon.started_at for s in statuses),
        timeout=120, what="a heartbeat from every required daemon", proc=daemon)
    return daemon


@pytest.fixture
def stack(module_stack: Stack) -> Stack:
    """The module's services, the daemon running (a test before may have stopped it)."""
    if module_stack.daemon.poll() is not None:
        module_stack.daemon = wait_for_daemon(module_stack, start_daemon(module_stack))
    return module_stack


@pytest.fixture(scope="module")
def module_stack(pg_server, template_database, tmp_path_factory):
    root = tmp_path_factory.mktemp("verify")
    password = pg_server.admin.password or ""
    database = pg_server.create_database(template=template_database)
    other = pg_server.create_database(template=template_database)
    home = pgharness.write_dagster_home(root / "dagster_home", pg_server.target(database))
    other_home = pgharness.write_dagster_home(root / "other_home", pg_server.target(other))
    workspace = write_workspace(home / "workspace.yaml")  # the project's layout
    port = free_port()
    # The project layout: config/config.yml beside DAGSTER_HOME names the webserver's URL.
    (root / "config").mkdir()
    (root / "config" / "config.yml").write_text(
        f"dagpg:\n  webserver:\n    host: 127.0.0.1\n    port: {port}\n"
        "    path_prefix: /dagster\n  access:\n    enabled: false\n", encoding="utf-8")
    env = {"DAGSTER_PG_PASSWORD": password}
    web = processes.start_webserver(home, port, root / "logs", path_prefix="/dagster", env=env,
                                    workspace=workspace)
    stack = Stack(root, home, database, other_home, other, workspace, port, password,
                  pg_server, daemon=None)
    stack.daemon = start_daemon(stack)
    try:
        processes.wait_for(lambda: processes.http_json(f"{stack.url}/server_info"),
                           timeout=120, what="webserver /server_info", proc=web)
        wait_for_daemon(stack, stack.daemon)
        # The page writes instance_info.run_storage_id, the instance id, on first use.
        assert processes.http_json(f"{stack.url}/server_info")
        urllib.request.urlopen(f"{stack.url}/", timeout=10).close()
        result = CliRunner().invoke(cli, ["backup", "--dest", str(root / "backups"),
                                          "--json", "--silent"], env=stack.env())
        assert result.exit_code == 0, result.output + result.stderr
        yield stack
    finally:
        processes.stop(stack.daemon)
        processes.stop(web)
        pg_server.drop_database(database)
        pg_server.drop_database(other)


def verify(stack: Stack, *args: str, **env: str | None) -> tuple[Result, dict]:
    result = CliRunner().invoke(cli, ["verify", "--json", *args], env=stack.env(**env))
    try:
        report = json.loads(result.stdout)
    except ValueError:
        raise AssertionError(f"not JSON (exit {result.exit_code}):\n{result.output}"
                             f"{result.stderr}") from None
    return result, report


def instance_id(stack: Stack, database: str) -> str:
    with pg.connection(stack.server.target(database)) as conn, conn.cursor() as cur:
        cur.execute("SELECT run_storage_id FROM instance_info")
        return cur.fetchone()[0]


def checks(report: dict) -> dict[str, dict]:
    return {c["name"]: c for c in report["checks"]}


def statuses(report: dict) -> dict[str, str]:
    return {c["name"]: c["status"] for c in report["checks"]}


# -- healthy ------------------------------------------------------------------------------

def test_verify_passes_on_a_healthy_instance(stack, monkeypatch):
    result, report = verify(stack, "--public-url", stack.url)
    assert result.exit_code == 0, json.dumps(report, indent=1)
    assert report["ok"] is True
    expected = {name: "ok" for name in statuses(report)}
    # One webserver without a proxy's login here (access control: test_access.py).
    expected.update({"access.anonymous": "warn", "access.read_only": "skip"})
    expected["keeper.heartbeat"] = "warn"  # no `dagpg watch` here: tests/test_watch*.py
    assert statuses(report) == expected
    by_name = checks(report)
    # The webserver's URL came from config.yml beside DAGSTER_HOME (port, /dagster).
    assert by_name["webserver.server_info"]["data"]["url"] == f"{stack.url}/server_info"
    assert by_name["public.instance_id"]["detail"] == (
        f"the page serves instance {instance_id(stack, stack.database)}, the same as the "
        "database")
    assert by_name["public.websocket"]["detail"] == (
        f"ws://127.0.0.1:{stack.port}/dagster/graphql upgrades with subprotocol graphql-ws "
        "and acknowledges, compressed (permessage-deflate)")
    assert by_name["operations.schedules"]["detail"] == (
        "RUNNING: park_access_daily, instance_backup_nightly")
    # The required daemons came from the webserver serving this instance; they are Dagster's
    # own list for its dagster.yaml.
    heartbeat_data = by_name["daemon.heartbeats"]["data"]
    assert heartbeat_data["required_from"] == "webserver"
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", stack.password)
    assert required_daemon_types(resolve_instance(stack.home)) == (
        heartbeat_data["required"], None)
    assert {"SCHEDULER", "SENSOR", "BACKFILL", "QUEUED_RUN_COORDINATOR"} <= set(
        heartbeat_data["required"])


def test_human_output_is_a_table_with_a_verdict(stack):
    result = CliRunner().invoke(cli, ["verify"], env=stack.env())
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("ok    Same home ")
    assert lines[-1].startswith("healthy: ")


def test_public_url_without_the_prefix_fails(stack):
    result, report = verify(stack, "--public-url", f"http://127.0.0.1:{stack.port}")
    assert result.exit_code == 1
    detail = checks(report)["public.server_info"]["detail"]
    assert detail == (f"http://127.0.0.1:{stack.port}/server_info answered HTTP 404 Not Found; "
                      "is the path prefix right? (the URL's path must be dagster-webserver's "
                      "--path-prefix)")
    # The page redirects to /dagster and says so: the path prefix does not match the URL.
    assert checks(report)["public.instance_id"]["detail"] == (
        f"the page at http://127.0.0.1:{stack.port}/ says its path prefix is '/dagster', but "
        f"it is served under '/': use {stack.url} or start dagster-webserver without "
        "--path-prefix")
    assert statuses(report)["public.websocket"] == "fail"


def test_a_stopped_or_missing_schedule_fails(stack):
    (stack.root / "schedules.yml").write_text(
        f"dagpg:\n  webserver:\n    port: {stack.port}\n    path_prefix: /dagster\n"
        "  verify:\n    schedules: [park_access_daily, verify_stopped_schedule, nightly_typo]\n",
        encoding="utf-8")
    result, report = verify(stack, DAGPG_CONFIG=str(stack.root / "schedules.yml"))
    assert result.exit_code == 1
    detail = checks(report)["operations.schedules"]["detail"]
    # `dagster` when PATH finds the one beside dagpg, else its full path.
    program = "dagster" if shutil.which("dagster") == str(processes.BIN / "dagster") \
        else str(processes.BIN / "dagster")
    command = f"{program} schedule start verify_stopped_schedule -w {stack.home}/workspace.yaml"
    assert detail == (
        "not in the loaded definitions: nightly_typo (add them to dagster_definitions.py, or fix "
        "dagpg.verify.schedules in config.yml); not running: verify_stopped_schedule (start "
        f"each in the UI, Schedules, or run `{command}`)")
    assert [n for n, s in statuses(report).items() if s == "fail"] == ["operations.schedules"]

    # The command works as printed, from anywhere, with the environment verify had.
    env = {**os.environ, **{k: v for k, v in stack.env().items() if v is not None}}
    started = subprocess.run(shlex.split(command), cwd=stack.root, env=env,
                             capture_output=True, text=True, timeout=180)
    assert started.returncode == 0, started.stdout + started.stderr
    result, report = verify(stack, DAGPG_CONFIG=str(stack.root / "schedules.yml"))
    assert checks(report)["operations.schedules"]["data"]["verify_stopped_schedule"] == [
        "RUNNING"]


# -- the two services on different instances ------------------------------------------------

def test_a_webserver_on_another_database_is_named(stack):
    port = free_port()
    other = processes.start_webserver(stack.other_home, port, stack.root / "logs",
                                      env={"DAGSTER_PG_PASSWORD": stack.password},
                                      workspace=stack.workspace)
    try:
        processes.wait_for(lambda: processes.http_json(f"http://127.0.0.1:{port}/server_info"),
                           timeout=120, what="second webserver", proc=other)
        result, report = verify(stack, "--webserver-url", f"http://127.0.0.1:{port}")
    finally:
        processes.stop(other)
    assert result.exit_code == 1
    other_id = instance_id(stack, stack.other_database)
    own_id = instance_id(stack, stack.database)
    by_name = checks(report)
    assert by_name["webserver.instance_id"]["status"] == "fail"
    assert by_name["webserver.instance_id"]["detail"] == (
        f"the webserver serves instance {other_id}, the database holds {own_id}: it reads "
        "another database; set the same DAGSTER_HOME in both services and restart the webserver")
    assert by_name["webserver.heartbeats"]["status"] == "fail"
    assert "SCHEDULER has no heartbeat in the webserver, one in the database" in (
        by_name["webserver.heartbeats"]["detail"])
    assert statuses(report)["webserver.server_info"] == "ok"


def servy_file(path: Path, name: str, program: str, parameters: str,
               env: dict[str, str]) -> Path:
    path.write_bytes(service_xml({
        "Name": name, "ExecutablePath": str(processes.BIN / program),
        "Parameters": parameters, "EnvironmentVariables": encode_environment(env),
    }))
    return path


def test_servy_configs_give_each_service_its_home(stack):
    web_params = f'-w "{stack.workspace}" -h 127.0.0.1 -p {stack.port} --path-prefix /dagster'
    web = servy_file(stack.root / "DagsterWebserver.xml", "DagsterWebserver",
                     "dagster-webserver", web_params, {"DAGSTER_HOME": str(stack.home)})
    daemon = servy_file(stack.root / "DagsterDaemon.xml", "DagsterDaemon", "dagster-daemon",
                        f'run -w "{stack.workspace}"', {"DAGSTER_HOME": str(stack.home)})
    # DAGSTER_HOME of the shell points elsewhere: the Servy configs decide.
    result, report = verify(stack, "--servy-config", str(web), "--servy-config", str(daemon),
                            DAGSTER_HOME=str(stack.other_home))
    assert result.exit_code == 0, json.dumps(report, indent=1)
    assert checks(report)["same_home"]["detail"] == (
        f"DagsterWebserver and DagsterDaemon: DAGSTER_HOME={stack.home} -> "
        f"{stack.server.target(stack.database).url()}")
    # The webserver's URL came from its Servy parameters (-p, --path-prefix).
    assert checks(report)["webserver.server_info"]["data"]["url"] == f"{stack.url}/server_info"

    servy_file(daemon, "DagsterDaemon", "dagster-daemon", "run",
               {"DAGSTER_HOME": str(stack.other_home)})
    result, report = verify(stack, "--servy-config", str(web), "--servy-config", str(daemon))
    assert result.exit_code == 1
    other_url = stack.server.target(stack.other_database).url()
    assert checks(report)["same_home"]["detail"] == (
        f"DagsterWebserver uses {stack.server.target(stack.database).url()} "
        f"(DAGSTER_HOME={stack.home}, {web}) but DagsterDaemon uses {other_url} "
        f"(DAGSTER_HOME={stack.other_home}, {daemon}); set the same DAGSTER_HOME in both "
        "services' environments")

    servy_file(daemon, "DagsterDaemon", "dagster-daemon", "run", {"PROJECT_ENV": "prod"})
    result, report = verify(stack, "--servy-config", str(web), "--servy-config", str(daemon))
    assert result.exit_code == 1
    assert checks(report)["same_home"]["detail"] == (
        f"DagsterDaemon ({daemon}): sets no DAGSTER_HOME; set it in the service's environment "
        "to the folder holding dagster.yaml")
    assert statuses(report)["database"] == "skip"


# -- failures of the parts ------------------------------------------------------------------

def test_wrong_password_is_a_failed_database_check(stack):
    result, report = verify(stack, DAGSTER_PG_PASSWORD="not-the-password")
    assert result.exit_code == 1
    target = stack.server.target(stack.database)
    assert checks(report)["database"]["detail"] == (
        f"PostgreSQL at {target.host}:{target.port}/{stack.database} rejected the password for "
        "user 'postgres'; check DAGSTER_PG_PASSWORD")
    assert statuses(report)["webserver.server_info"] == "ok"
    assert statuses(report)["webserver.instance_id"] == "skip"
    assert "not-the-password" not in result.output + result.stderr


def test_webserver_down_is_a_failed_check(stack):
    port = free_port()
    result, report = verify(stack, "--webserver-url", f"http://127.0.0.1:{port}")
    assert result.exit_code == 1
    assert checks(report)["webserver.server_info"]["detail"] == (
        f"http://127.0.0.1:{port}/server_info: connection refused; is dagster-webserver "
        f"(DagsterWebserver) running on 127.0.0.1:{port}? check its stdout/stderr logs")
    assert statuses(report)["daemon.heartbeats"] == "ok"
    assert statuses(report)["operations.schedules"] == "skip"


def test_database_down_is_a_failed_check(stack, tmp_path):
    server, root = pgharness.start_throwaway()
    try:
        target = server.target("postgres")
        home = pgharness.write_dagster_home(tmp_path / "home", target)
        env = {"DAGSTER_HOME": str(home), "DAGSTER_PG_PASSWORD": server.admin.password}
        result, report = verify(stack, **env)
        assert checks(report)["database"]["detail"] == (
            "Dagster schema at nothing, not head "
            f"{checks(report)['database']['data']['dagster_head']}: run `dagpg db upgrade`")
        server.cluster.down()
        result, report = verify(stack, **env)
    finally:
        server.cluster.destroy()
        shutil.rmtree(root, ignore_errors=True)
    assert result.exit_code == 1
    assert checks(report)["database"]["detail"] == (
        f"cannot connect to PostgreSQL at 127.0.0.1:{target.port}/postgres: connection refused; "
        "is the server running? (for the local server: `dagpg db status`)")
    assert statuses(report)["daemon.heartbeats"] == "skip"


# -- the daemon stops (the `stack` fixture starts another for any test after) ---------------

def test_a_stopped_daemon_fails_once_its_heartbeats_age(stack):
    processes.stop(stack.daemon)
    with pg.connection(stack.server.target(stack.database)) as conn, conn.cursor() as cur:
        cur.execute("SELECT extract(epoch FROM now() AT TIME ZONE 'UTC' - min(timestamp)) "
                    "FROM daemon_heartbeats")
        oldest = float(cur.fetchone()[0])
    limit = f"{oldest + 6:.0f}"  # every heartbeat is still within the limit...
    _, report = verify(stack, "--max-heartbeat-age", limit)
    assert statuses(report)["daemon.heartbeats"] == "ok", checks(report)["daemon.heartbeats"]
    # ...until the stopped daemon's last ones pass it.
    result, report = processes.wait_for(
        lambda: (out := verify(stack, "--max-heartbeat-age", limit))[0].exit_code == 1 and out,
        timeout=30, what="verify to fail on heartbeat age", interval=1)
    detail = checks(report)["daemon.heartbeats"]["detail"]
    assert detail.startswith("stale heartbeats: ")
    assert f"(limit {limit} s): is dagster-daemon running (DagsterDaemon) with the same " \
           "DAGSTER_HOME? Check its stderr log" in detail
    ages = checks(report)["daemon.heartbeats"]["data"]["ages_s"]
    stale = [part.split()[0] for part in
             detail.removeprefix("stale heartbeats: ").split(" (limit")[0].split(", ")]
    assert stale == sorted(t for t, age in ages.items() if age > float(limit))
    assert max(ages, key=ages.get) in stale
