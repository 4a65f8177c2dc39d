"""`dagpg verify` without Dagster services: usage errors, the database side, misbehaving HTTP
servers (a stalled one, a proxy answering 502), and how observations are judged."""

from __future__ import annotations

import http.server
import json
import socket
import threading
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from dagpg.cli import cli
from dagpg.errors import ConfigurationError
from dagpg.heartbeats import Heartbeat
from dagpg.localdb import free_port
from dagpg.render.servy import encode_environment, service_xml
from dagpg.settings import KitSettings
from dagpg.verify import checks, hints, report, verify
from dagpg.verify.database import DbObservation
from dagpg.verify.services import CURRENT_ENVIRONMENT, DAEMON, ServiceHome, listen_url
from dagpg.verify.webserver import BaseUrl
from tests import pgharness

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def run(*args: str, env: dict[str, str | None] | None = None):
    return CliRunner().invoke(cli, ["verify", *args], env=env)


def run_json(*args: str, env=None) -> tuple[int, dict]:
    result = run("--json", *args, env=env)
    return result.exit_code, json.loads(result.stdout)


def by_name(data: dict) -> dict[str, dict]:
    return {c["name"]: c for c in data["checks"]}


def write_config(path: Path, **verify: object) -> Path:
    lines = ["dagpg:", "  verify:"] + [f"    {k}: {json.dumps(v)}" for k, v in verify.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# -- usage errors: exit 2, one line ------------------------------------------------------

@pytest.mark.parametrize("option, url, message", [
    ("--webserver-url", "ftp://host", "--webserver-url 'ftp://host' is not an http(s) URL; give "
     "one like http://127.0.0.1:3000 or https://host/dagster"),
    ("--public-url", "https://host/dagster?x=1", "--public-url 'https://host/dagster?x=1' has a "
     "query or fragment; give only scheme, host and path"),
])
def test_a_bad_url_is_a_usage_error(dagster_home, option, url, message):
    result = run(option, url)
    assert result.exit_code == 2
    assert result.stderr.strip() == f"Error: {message}"


def test_no_dagster_home_is_a_usage_error(monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    result = run()
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "Error: DAGSTER_HOME is not set; set it to the folder holding dagster.yaml (e.g. export "
        "DAGSTER_HOME=$PWD/dagster_home) or pass --dagster-home")


def test_no_password_is_a_usage_error(dagster_home, monkeypatch):
    monkeypatch.delenv("DAGSTER_PG_PASSWORD")
    result = run()
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "Error: environment variable DAGSTER_PG_PASSWORD is not set; set it to the PostgreSQL "
        "password of the instance (in both services' environments on a server)")


@pytest.mark.parametrize("limits, message", [
    ({"heartbeat_max_age_s": 0}, "heartbeat_max_age_s (--max-heartbeat-age) must be greater "
     "than 0, not 0; give a number of seconds"),
    ({"backup_max_age_h": -2.5}, "backup_max_age_h (--max-backup-age) must be greater than 0, "
     "not -2.5; give a number of hours"),
    ({"timeout_s": float("nan")}, "timeout_s must be greater than 0, not nan; give a number of "
     "seconds"),
])
def test_verify_refuses_a_limit_of_zero_or_less(limits, message):
    # Before anything is resolved or asked: no DAGSTER_HOME is needed to be told.
    with pytest.raises(ConfigurationError) as err:
        verify(KitSettings(), dagster_home="/nonexistent", **limits)
    assert str(err.value) == message
    assert err.value.exit_code == 2


def test_the_cli_reports_a_bad_limit_as_one_line(dagster_home):
    result = run("--max-backup-age", "0")
    assert result.exit_code == 2
    assert result.stderr.strip() == ("Error: backup_max_age_h (--max-backup-age) must be "
                                     "greater than 0, not 0; give a number of hours")


def test_a_servy_config_of_another_service_is_a_usage_error(dagster_home, tmp_path):
    path = tmp_path / "Other.xml"
    path.write_bytes(service_xml({"Name": "Spooler", "ExecutablePath": r"C:\bin\spool.exe",
                                  "EnvironmentVariables": encode_environment({})}))
    result = run("--servy-config", str(path))
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"Error: {path}: service 'Spooler' is none of 'DagsterWebserver', 'DagsterDaemon', "
        "'DagsterWebserverReadOnly' or 'DagsterKeeper' and runs neither dagster-webserver, "
        "dagster-daemon nor dagpg watch; give the services' own Servy configs")


def test_two_servy_configs_for_one_service_are_a_usage_error(dagster_home, tmp_path):
    paths = []
    for name in ("a.xml", "b.xml"):
        paths.append(tmp_path / name)
        paths[-1].write_bytes(service_xml({
            "Name": "DagsterDaemon", "ExecutablePath": r"C:\env\Scripts\dagster-daemon.exe",
            "EnvironmentVariables": encode_environment({"DAGSTER_HOME": str(dagster_home.home)})}))
    result = run("--servy-config", str(paths[0]), "--servy-config", str(paths[1]))
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"Error: {paths[1]} and {paths[0]} both configure the daemon; give one Servy config per "
        "service")


def test_two_folders_on_one_database_warn(dagster_home, tmp_path):
    second = pgharness.write_dagster_home(tmp_path / "second_home", dagster_home.target)
    files = []
    for name, program, home in (("DagsterWebserver", "dagster-webserver", second),
                                ("DagsterDaemon", "dagster-daemon", dagster_home.home)):
        files += ["--servy-config", str(tmp_path / f"{name}.xml")]
        (tmp_path / f"{name}.xml").write_bytes(service_xml({
            "Name": name, "ExecutablePath": rf"C:\env\Scripts\{program}.exe",
            "Parameters": f"-p {free_port()}",
            "EnvironmentVariables": encode_environment({"DAGSTER_HOME": str(home)})}))
    _, data = run_json(*files)
    assert by_name(data)["same_home"]["status"] == "warn"
    assert by_name(data)["same_home"]["detail"] == (
        f"same database {dagster_home.target.url()}, but different folders: "
        f"DAGSTER_HOME={second} (DagsterWebserver) and {dagster_home.home} (DagsterDaemon); "
        "compute logs may not show in the UI; use one DAGSTER_HOME")


# -- the database side, no services running --------------------------------------------------

def test_without_a_daemon_the_required_daemons_are_named(dagster_home):
    port = free_port()
    code, data = run_json("--webserver-url", f"http://127.0.0.1:{port}")
    assert code == 1
    checked = by_name(data)
    assert checked["database"]["status"] == "ok"
    assert checked["same_home"]["status"] == "ok"
    # Dagster's own list for this dagster.yaml (queued run coordinator: QUEUED_RUN_COORDINATOR).
    required = sorted(checked["daemon.heartbeats"]["data"]["required"])
    assert {"BACKFILL", "QUEUED_RUN_COORDINATOR", "SCHEDULER", "SENSOR"} <= set(required)
    assert checked["daemon.heartbeats"]["data"]["required_from"] == "dagster.yaml"
    assert checked["daemon.heartbeats"]["detail"] == (
        f"no heartbeat from {', '.join(checked['daemon.heartbeats']['data']['required'])}: is "
        "dagster-daemon running (DagsterDaemon) with the same DAGSTER_HOME? Check its stderr log")
    assert data["instance"]["url"] == dagster_home.target.url()


def test_dagster_head_read_from_files_is_alembics():
    from alembic.script import ScriptDirectory

    from dagpg.schema import dagster_alembic_config
    from dagpg.verify.database import dagster_head_revision

    expected = ScriptDirectory.from_config(dagster_alembic_config()).get_current_head()
    assert dagster_head_revision() == expected


# -- misbehaving HTTP servers ----------------------------------------------------------------

@pytest.fixture
def stalled_port():
    """A port that accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield sock.getsockname()[1]
    sock.close()


def test_a_stalled_webserver_is_a_failed_check_not_a_hang(dagster_home, tmp_path,
                                                          stalled_port, monkeypatch):
    monkeypatch.setenv("DAGPG_CONFIG", str(write_config(tmp_path / "c.yml", timeout_s=0.5)))
    url = f"http://127.0.0.1:{stalled_port}"
    code, data = run_json("--webserver-url", url, "--public-url", f"{url}/dagster")
    assert code == 1
    checked = by_name(data)
    assert checked["webserver.server_info"]["detail"] == (
        f"{url}/server_info: no answer within 0.5 s; is dagster-webserver (DagsterWebserver) "
        f"running on 127.0.0.1:{stalled_port}? check its stdout/stderr logs")
    assert checked["public.server_info"]["detail"].startswith(
        f"{url}/dagster/server_info: no answer within 0.5 s; ")
    assert checked["public.websocket"]["status"] == "skip"
    assert data["elapsed_s"] < 10


def test_a_stalled_database_is_a_failed_check_not_a_hang(pg_server, tmp_path, stalled_port,
                                                         monkeypatch):
    target = replace(pg_server.target("dagster"), port=stalled_port)
    home = pgharness.write_dagster_home(tmp_path / "home", target)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", "irrelevant")
    monkeypatch.setenv("DAGPG_CONFIG", str(write_config(tmp_path / "c.yml", timeout_s=1)))
    code, data = run_json("--webserver-url", f"http://127.0.0.1:{free_port()}")
    assert code == 1
    assert by_name(data)["database"]["detail"] == (
        f"cannot connect to PostgreSQL at {target.host}:{stalled_port}/dagster: timed out; "
        "is the server running? (for the local server: `dagpg db status`)")
    assert data["elapsed_s"] < 10


class _BadGateway(http.server.BaseHTTPRequestHandler):
    def _answer(self):
        body = b"<html><body>502 Bad Gateway</body></html>"
        self.send_response(502)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args):
        pass


@pytest.fixture
def bad_gateway():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _BadGateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_proxy_answering_502_fails_each_public_check(dagster_home, bad_gateway):
    code, data = run_json("--public-url", f"{bad_gateway}/dagster/")
    assert code == 1
    checked = by_name(data)
    assert checked["public.server_info"]["detail"] == (
        f"{bad_gateway}/dagster/server_info answered HTTP 502 Bad Gateway; a 502 from the proxy "
        "means the webserver is down or on another port; check the proxy's rule and the "
        "webserver")
    assert checked["public.instance_id"]["detail"] == (
        f"{bad_gateway}/dagster/ answered HTTP 502 Bad Gateway")
    assert checked["public.heartbeats"]["detail"] == (
        f"{bad_gateway}/dagster/graphql answered HTTP 502 Bad Gateway")
    assert checked["public.websocket"]["detail"].startswith(
        f"{bad_gateway.replace('http', 'ws')}/dagster/graphql: expected 101 Switching Protocols, "
        "got HTTP 502: the proxy does not pass WebSocket upgrades")


# -- URLs ------------------------------------------------------------------------------------

@pytest.mark.parametrize("url, prefix, server_info", [
    ("http://127.0.0.1:3000", "", "http://127.0.0.1:3000/server_info"),
    ("http://127.0.0.1:3000/", "", "http://127.0.0.1:3000/server_info"),
    ("https://gis.example.org/dagster/", "/dagster", "https://gis.example.org/dagster/server_info"),
    ("https://gis.example.org:8443/a/b", "/a/b", "https://gis.example.org:8443/a/b/server_info"),
    ("http://[::1]:3000/x", "/x", "http://[::1]:3000/x/server_info"),
])
def test_the_path_prefix_comes_from_the_url(url, prefix, server_info):
    base = BaseUrl.parse(url)
    assert base.prefix == prefix
    assert base.url("/server_info") == server_info


def test_a_url_with_a_bad_port_is_a_configuration_error():
    with pytest.raises(ConfigurationError, match="has an invalid port"):
        BaseUrl.parse("http://host:99999/")


@pytest.mark.parametrize("parameters, url", [
    ('-w "C:\\p\\workspace.yaml" -h 127.0.0.1 -p 3001', "http://127.0.0.1:3001"),
    ("-w ws.yaml --host 0.0.0.0 --port=3002 --path-prefix /dagster/",
     "http://127.0.0.1:3002/dagster"),
    ("-w ws.yaml -l /d", "http://127.0.0.1:3000/d"),
    ("", None),
])
def test_the_webserver_url_from_servy_parameters(parameters, url):
    service = ServiceHome("webserver", "DagsterWebserver", "x.xml", "C:\\h", {}, parameters)
    assert listen_url(service) == url


def test_the_schedule_hint_names_the_workspace_the_webserver_loads(tmp_path, monkeypatch):
    """From the webserver's Servy command line, else <DAGSTER_HOME>/workspace.yaml; with the
    DAGSTER_HOME the command needs when the environment does not have it."""
    servy = ServiceHome("webserver", "DagsterWebserver", "x.xml", "C:\\h", {},
                        '-w "C:\\p\\dagster_home\\workspace.yaml" -h 127.0.0.1')
    assert hints.workspace_of(servy, None) == Path("C:\\p\\dagster_home\\workspace.yaml")
    here = ServiceHome("webserver", "DagsterWebserver", CURRENT_ENVIRONMENT, str(tmp_path))
    assert hints.workspace_of(here, tmp_path) is None
    (tmp_path / "workspace.yaml").write_text("load_from: []\n")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    command = hints.schedule_start(["a", "b"], here, tmp_path)
    assert command.split(" && ")[1].endswith(f"schedule start b -w {tmp_path}/workspace.yaml")
    monkeypatch.delenv("DAGSTER_HOME")
    assert hints.schedule_start(["a"], here, tmp_path).startswith(f"DAGSTER_HOME={tmp_path} ")



def test_the_schedule_hint_on_windows_runs_in_windows_powershell(tmp_path, monkeypatch):
    """Windows PowerShell 5.1 (the setup script's shell) has no `&&`, and runs a quoted program
    path only after the call operator `&`."""
    (tmp_path / "Program Files").mkdir()
    exe = tmp_path / "Program Files" / "dagster.exe"
    exe.write_text("")
    monkeypatch.setattr(hints.sys, "executable", str(exe.with_name("python.exe")))
    monkeypatch.setattr(hints, "on_windows", lambda: True)
    monkeypatch.setattr(hints.shutil, "which", lambda name: None)
    here = ServiceHome("webserver", "DagsterWebserver", CURRENT_ENVIRONMENT, str(tmp_path))
    (tmp_path / "workspace.yaml").write_text("load_from: []\n")
    command = hints.schedule_start(["a", "b"], here, tmp_path)
    assert "&&" not in command
    first, second = command.split("; ")
    assert first == f'& "{exe}" schedule start a -w {tmp_path}/workspace.yaml'
    assert second.startswith(f'& "{exe}" schedule start b ')

# -- judging observations ----------------------------------------------------------------------

def beats(**ages: float) -> list[Heartbeat]:
    return [Heartbeat(t, None, NOW - timedelta(seconds=a)) for t, a in ages.items()]


def db(required: list[str], heartbeat_reads: list[list[Heartbeat]]) -> DbObservation:
    from dagpg.schema import SchemaStatus

    return DbObservation(server_version="15", status=SchemaStatus("a", "a", "b", "b"),
                         run_storage_id="id", heartbeat_reads=heartbeat_reads,
                         required_daemons=required)


DAEMON_SERVICE = ServiceHome(DAEMON, "DagsterDaemon", CURRENT_ENVIRONMENT, "/h")


def test_every_required_daemon_must_be_fresh():
    obs = db(["SCHEDULER", "SENSOR"], [beats(SCHEDULER=130.4, SENSOR=3)])
    result = checks.daemon_heartbeats(obs, 120, DAEMON_SERVICE, now=NOW)
    assert result.status == checks.FAIL
    assert result.detail.startswith("stale heartbeats: SCHEDULER 130 s ago (limit 120 s): ")
    fresh = checks.daemon_heartbeats(obs, 200, DAEMON_SERVICE, now=NOW)
    assert (fresh.status, fresh.detail) == (
        checks.OK, "all 2 required daemons (SCHEDULER, SENSOR) beat within 200 s (oldest 130 s "
        "ago)")


def test_a_heartbeat_written_between_two_reads_still_matches():
    first, second = beats(SENSOR=30), beats(SENSOR=1)
    shown = [{"daemonType": "SENSOR", "lastHeartbeatTime": second[0].timestamp.timestamp()}]
    assert checks.compare_heartbeats(shown, [first], None)
    assert checks.compare_heartbeats(shown, [first, second], None) == []


def test_heartbeats_of_another_instance_are_named():
    shown = [{"daemonType": "SENSOR", "lastHeartbeatTime": (NOW.timestamp() - 500)},
             {"daemonType": "SCHEDULER", "lastHeartbeatTime": None}]
    assert checks.compare_heartbeats(shown, [beats(SENSOR=2, SCHEDULER=2)], ["ASSET"]) == [
        "SCHEDULER has no heartbeat in the webserver, one in the database",
        "SENSOR at 11:51:40.000Z in the webserver, 11:59:58.000Z in the database",
        "the webserver does not require daemon ASSET (another dagster.yaml)",
    ]


@dataclass(frozen=True)
class Backup:  # the fields dagpg.backup.catalog.BackupInfo gives verify
    name: str
    finished_at: datetime
    verified: bool


@pytest.mark.parametrize("hours, verified, status, detail", [
    (2, True, checks.OK, "newest backup b is 2.0 h old and verified"),
    (2, False, checks.WARN, "newest backup b is 2.0 h old but not verified: run `dagpg backups "
     "verify b`"),
    (27, True, checks.FAIL, "newest backup b is 27.0 h old (limit 26 h): is the backup schedule "
     "running? see its last run in the UI"),
])
def test_backup_age(hours, verified, status, detail):
    obs = checks.BackupObservation(Backup("b", NOW - timedelta(hours=hours), verified))
    result = checks.backup(obs, 26, now=NOW)
    assert (result.status, result.detail) == (status, detail)


def test_skipped_checks_and_warnings_pass_a_failure_does_not():
    skipped = checks.backup(None, 26)
    assert (skipped.status, skipped.detail) == (checks.SKIP, "needs the database: see database")
    warned = checks.CheckResult("x", "X", checks.WARN, "look")
    assert report.Report([skipped, warned]).exit_code == 0
    failed = checks.CheckResult("y", "Y", checks.FAIL, "broken")
    assert report.Report([skipped, warned, failed]).exit_code == 1


def test_default_webserver_url_comes_from_settings():
    from dagpg.verify import default_webserver_url

    settings = KitSettings.model_validate(
        {"webserver": {"host": "127.0.0.1", "port": 3100, "path_prefix": "dagster/"}})
    assert default_webserver_url(settings) == "http://127.0.0.1:3100/dagster"
