"""`dagpg verify` on a freshly set-up server: the ArcPy license check in the services' Python,
and the bounded wait for a fresh daemon's first heartbeats.

ArcPy cannot run here. The license check runs its probe in a real child Python with the
daemon's environment from its Servy config; that environment's PYTHONPATH holds a stand-in
`arcpy` package answering as Esri documents ProductInfo ("NotInitialized" without a license;
ArcView/ArcEditor/ArcInfo) and GetInstallInfo (a dict with "Version"). ASSUMPTION: an account
without a license fails at `import arcpy` with RuntimeError "Not signed into Portal." (reported
for standalone scripts, gis.stackexchange.com/questions/238985; Esri does not document the
exception).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from dagpg import schema
from dagpg.cli import cli
from dagpg.localdb import free_port
from dagpg.render.servy import encode_environment, service_xml
from dagpg.settings import KitSettings
from dagpg.verify import arcpy_license
from dagpg.verify.full import verify_full
from dagpg.verify.services import CURRENT_ENVIRONMENT, DAEMON, ServiceHome

BIN = Path(sys.executable).parent

LICENSED = '''
def ProductInfo():
    return "ArcInfo"
def GetInstallInfo():
    return {"Version": "3.3.2", "ProductName": "ArcGISPro"}
'''
NO_LICENSE = '''
def ProductInfo():
    return "NotInitialized"
def GetInstallInfo():
    return {"Version": "3.5.0"}
'''
NOT_SIGNED_IN = 'raise RuntimeError("Not signed into Portal.")\n'
SLOW = "import time\ntime.sleep(60)\n"


def fake_arcpy(root: Path, body: str) -> Path:
    package = root / "site" / "arcpy"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(body)
    return package.parent


def daemon(environment: dict[str, str] | None = None,
           executable: str = str(BIN / "dagster-daemon")) -> ServiceHome:
    return ServiceHome(DAEMON, "DagsterDaemon", "DagsterDaemon.xml", None,
                       environment or {}, "run", executable)


def settings(check: str = "auto", timeout_s: float = 60) -> KitSettings:
    return KitSettings.model_validate({"arcpy": {"check": check, "timeout_s": timeout_s}})


# ---- the license check ------------------------------------------------------------------

def test_a_licensed_arcpy_in_the_services_python_passes(tmp_path):
    site = fake_arcpy(tmp_path, LICENSED)
    result = arcpy_license.check(settings(), daemon({"PYTHONPATH": str(site)}))
    assert result.status == "ok", result.detail
    assert result.detail.startswith(
        f"arcpy 3.3.2 imports in {BIN / 'python'} with a Advanced license (ArcInfo) for ")
    assert result.data["product"] == "ArcInfo"


@pytest.mark.parametrize(("body", "detail"), [
    (NO_LICENSE, "arcpy imports in {python} but no ArcGIS license is available to {user} "
                 "(ProductInfo: NotInitialized); "),
    (NOT_SIGNED_IN, "import arcpy fails in {python} as {user}: RuntimeError: Not signed into "
                    "Portal.; "),
])
def test_no_license_is_one_line_with_the_fix(tmp_path, body, detail):
    import getpass

    site = fake_arcpy(tmp_path, body)
    result = arcpy_license.check(settings(), daemon({"PYTHONPATH": str(site)}))
    assert result.status == "fail"
    assert result.detail == detail.format(python=BIN / "python", user=getpass.getuser()) + (
        "sign in to ArcGIS Pro once as that account with 'Sign in automatically' checked "
        "(Named User), or give it a Single Use or Concurrent Use license; see the README, "
        "'The service account and the ArcGIS license'")
    assert "\n" not in result.detail


def test_without_arcpy_the_check_applies_only_when_required():
    assert arcpy_license.check(settings("auto"), daemon()) is None  # open-source backend
    assert arcpy_license.check(settings("off"), daemon()) is None
    required = arcpy_license.check(settings("required"), daemon())
    assert (required.status, required.detail) == ("fail", (
        f"arcpy does not import in {BIN / 'python'} (dagpg.arcpy.check: required): run the "
        "services in the clone of ArcGIS Pro's environment that setup_dagster.ps1 makes"))


def test_an_arcpy_that_hangs_is_bounded(tmp_path):
    site = fake_arcpy(tmp_path, SLOW)
    started = time.monotonic()
    result = arcpy_license.check(settings(timeout_s=1), daemon({"PYTHONPATH": str(site)}))
    assert time.monotonic() - started < 10
    assert result.detail == (
        f"importing arcpy in {BIN / 'python'} took longer than 1 s (dagpg.arcpy.timeout_s): is "
        "the license server or ArcGIS Online reachable from this server?")


def test_the_probe_gets_the_services_environment_but_not_the_password(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", "s3cret")
    site = fake_arcpy(tmp_path, 'import os\nassert "DAGSTER_PG_PASSWORD" not in os.environ\n'
                      'assert os.environ["PROJECT_ENV"] == "prod"\n' + LICENSED)
    result = arcpy_license.check(settings(), daemon({"PYTHONPATH": str(site),
                                                     "PROJECT_ENV": "prod"}))
    assert result.status == "ok", result.detail


@pytest.mark.parametrize(("executable", "layout", "found"), [
    (r"C:\env\Scripts\dagster-daemon.exe", ["C:/env/python.exe"], "C:/env/python.exe"),  # conda
    (r"C:\env\Scripts\dagster-daemon.exe", ["C:/env/Scripts/python.exe"],
     "C:/env/Scripts/python.exe"),  # venv
    ("/srv/env/bin/dagster-daemon", ["/srv/env/bin/python"], "/srv/env/bin/python"),
    (r"C:\env\python.exe", ["C:/env/python.exe"], "C:/env/python.exe"),
    (r"C:\env\Scripts\dagster-daemon.exe", [], None),
])
def test_the_services_python_is_found_beside_their_program(monkeypatch, executable, layout,
                                                           found):
    existing = {str(Path(p.replace("C:/", "C:\\").replace("/", "\\")) if p.startswith("C:")
                    else Path(p)) for p in layout}
    monkeypatch.setattr(Path, "is_file", lambda self: str(self) in existing)
    python = arcpy_license.services_python(daemon(executable=executable))
    expected = None if found is None else (found.replace("C:/", "C:\\").replace("/", "\\")
                                           if found.startswith("C:") else found)
    assert (None if python is None else str(python)) == expected
    here = ServiceHome(DAEMON, "DagsterDaemon", CURRENT_ENVIRONMENT, None)
    assert arcpy_license.services_python(here) == Path(sys.executable)


def test_an_unlicensed_server_fails_verify_through_its_servy_config(dagster_home, tmp_path):
    site = fake_arcpy(tmp_path, NO_LICENSE)
    path = tmp_path / "DagsterDaemon.xml"
    path.write_bytes(service_xml({
        "Name": "DagsterDaemon", "ExecutablePath": str(BIN / "dagster-daemon"),
        "Parameters": "run", "EnvironmentVariables": encode_environment(
            {"DAGSTER_HOME": str(dagster_home.home), "PYTHONPATH": str(site)})}))
    result = CliRunner().invoke(cli, ["verify", "--json", "--servy-config", str(path),
                                      "--webserver-url", f"http://127.0.0.1:{free_port()}"])
    assert result.exit_code == 1
    checked = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert checked["arcpy.license"]["status"] == "fail"
    assert checked["arcpy.license"]["title"] == "ArcPy license"
    assert "no ArcGIS license is available" in checked["arcpy.license"]["detail"]


# ---- waiting for a fresh daemon's first heartbeats ------------------------------------------

def write_heartbeats(home: Path, delay_s: float) -> threading.Thread:
    """What a daemon that starts `delay_s` from now writes: a heartbeat per required daemon,
    through Dagster's own API."""
    from dagster._daemon.types import DaemonHeartbeat

    def beat():
        time.sleep(delay_s)
        from dagpg.instance import resolve_instance

        with schema.open_dagster_instance(resolve_instance(home)) as instance:
            for daemon_type in instance.get_required_daemon_types():
                instance.add_daemon_heartbeat(DaemonHeartbeat(
                    timestamp=time.time(), daemon_type=daemon_type, daemon_id="fresh",
                    errors=[]))

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    return thread


def heartbeats(report) -> tuple[str, str]:
    found = next(c for c in report.checks if c.name == "daemon.heartbeats")
    return found.status, found.detail


def test_verify_waits_for_the_first_heartbeats(dagster_home):
    said: list[str] = []
    writer = write_heartbeats(dagster_home.home, delay_s=1.5)
    started = time.monotonic()
    # No webserver listens at this URL: once the heartbeats are there, it waits for that too,
    # until the end of the wait.
    report = verify_full(KitSettings(), wait_s=6, poll_s=0.5, progress=said.append,
                         webserver_url=f"http://127.0.0.1:{free_port()}")
    writer.join(timeout=30)
    assert heartbeats(report)[0] == "ok", heartbeats(report)
    assert 6 <= time.monotonic() - started < 60
    assert said and said[0].startswith("waiting for the daemon's heartbeats (")
    assert "s left): no heartbeat from " in said[0]
    assert said[-1].startswith("waiting for the webserver to answer ("), said[-1]


def test_verify_waits_for_a_webserver_that_starts_listening(dagster_home):
    """A webserver service just started does not listen yet: --wait checks again until it
    answers (here: anything at all, an HTTP 404, which ends the wait and fails at once)."""
    import http.server
    import threading

    port = free_port()
    write_heartbeats(dagster_home.home, delay_s=0).join(timeout=30)
    server: list[http.server.HTTPServer] = []

    def listen_later():
        time.sleep(2)
        server.append(http.server.HTTPServer(("127.0.0.1", port),
                                             http.server.BaseHTTPRequestHandler))
        server[0].serve_forever(poll_interval=0.1)

    threading.Thread(target=listen_later, daemon=True).start()
    said: list[str] = []
    started = time.monotonic()
    try:
        report = verify_full(KitSettings(), wait_s=120, poll_s=0.5, progress=said.append,
                             webserver_url=f"http://127.0.0.1:{port}")
    finally:
        if server:
            server[0].shutdown()
    assert 2 <= time.monotonic() - started < 60
    assert said and all(s.startswith("waiting for the webserver to answer (") for s in said)
    answers = next(c for c in report.checks if c.name == "webserver.server_info")
    assert answers.status == "fail" and "HTTP 501" in answers.detail, answers


def test_the_wait_is_bounded(dagster_home):
    said: list[str] = []
    started = time.monotonic()
    report = verify_full(KitSettings(), wait_s=1.5, poll_s=0.5, progress=said.append,
                         webserver_url=f"http://127.0.0.1:{free_port()}")
    assert 1.5 <= time.monotonic() - started < 30
    assert heartbeats(report)[0] == "fail" and said
    assert report.exit_code == 1


def test_nothing_but_the_heartbeats_is_waited_for(dagster_home, monkeypatch):
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", "wrong")
    said: list[str] = []
    started = time.monotonic()
    report = verify_full(KitSettings(), wait_s=120, poll_s=0.5, progress=said.append,
                         webserver_url=f"http://127.0.0.1:{free_port()}")
    assert time.monotonic() - started < 30 and said == []
    assert {c.name: c.status for c in report.checks}["database"] == "fail"


def test_the_wait_option_from_the_command_line(dagster_home):
    started = time.monotonic()
    result = CliRunner().invoke(cli, ["verify", "--wait", "1", "--json", "--webserver-url",
                                      f"http://127.0.0.1:{free_port()}"])
    assert 1 <= time.monotonic() - started < 30
    assert result.exit_code == 1
    checked = {c["name"]: c["status"] for c in json.loads(result.stdout)["checks"]}
    assert checked["daemon.heartbeats"] == "fail"
    assert result.stderr.startswith("waiting for the daemon's heartbeats (1 s left): no "
                                    "heartbeat from ")
    bad = CliRunner().invoke(cli, ["verify", "--wait", "-1"])
    assert bad.exit_code == 2
    assert bad.stderr.strip() == ("Error: wait_s (--wait) must be 0 or more, not -1; give a "
                                  "number of seconds")
