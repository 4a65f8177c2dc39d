"""The keeper's parts against real things, without Dagster's services: process identity,
the three service managers (a real supervisord; Servy and systemd through stand-ins that follow
their documented behaviour), startup refusals, and the restart budget with a supervisord
whose "daemon" never comes back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from dagpg.cli import cli
from dagpg.localdb import free_port
from dagpg.services.base import MISSING, RUNNING, STOPPED, ServiceManagerError
from dagpg.services.servy import Servy
from dagpg.services.supervisord import Supervisord
from dagpg.services.systemd import Systemd
from dagpg.settings import load_settings
from dagpg.verify import checks
from dagpg.watch import Keeper, jsonlog, procs
from dagpg.watch.store import read_keepers
from tests.supervisor import Program, Supervisor

SLEEP = "sleep 100000"


def write_config(path: Path, **watch) -> Path:
    block = "\n".join(f"    {k}: {json.dumps(v)}" for k, v in watch.items())
    # One webserver (no dagpg.access): the supervisord here runs one, on a free port where
    # nothing answers (not 3000: on a shared machine something else may answer there).
    path.write_text(f"dagpg:\n  access:\n    enabled: false\n  webserver:\n"
                    f"    port: {free_port()}\n  watch:\n{block}\n", encoding="utf-8")
    return path


@pytest.fixture
def supervisor(tmp_path):
    sup = Supervisor(tmp_path / "sv", {"DagsterDaemon": Program(SLEEP, startsecs=0),
                                       "DagsterWebserver": Program(SLEEP, startsecs=0),
                                       "Stopped": Program(SLEEP, autostart=False)})
    sup.start()
    try:
        sup.wait_state("DagsterDaemon", "RUNNING")
        yield sup
    finally:
        sup.kill_all()


# -- process identity --------------------------------------------------------------------

def test_a_pid_is_the_worker_only_while_that_process_lives():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        deadline = time.monotonic() + 10
        while procs.started_at(child.pid) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        named_at = time.time()  # the worker names itself after it started
        assert procs.identity(child.pid, named_at) == procs.ALIVE
        assert abs(procs.started_at(child.pid) - named_at) < 30
        # An event older than the process: the id was reused by a younger process.
        assert procs.identity(child.pid, named_at - 60) == procs.GONE
        assert procs.identity(child.pid, named_at - procs.CLOCK_SLACK_S + 5) == procs.ALIVE
    finally:
        child.kill()
    child.wait()
    assert procs.identity(child.pid, named_at) == procs.GONE
    assert procs.boot_time() < procs.started_at(os.getpid()) <= time.time()


def test_a_pid_that_is_not_python_is_not_a_run_worker():
    child = subprocess.Popen(["sleep", "60"])
    try:
        deadline = time.monotonic() + 10
        while procs.is_python(child.pid) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert procs.is_python(child.pid) is False
        assert procs.identity(child.pid, time.time()) == procs.GONE
        assert procs.is_python(os.getpid()) is True
    finally:
        child.kill()
        child.wait()


def test_a_zombie_counts_as_gone():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        stat = Path(f"/proc/{child.pid}/stat").read_text()
        if stat[stat.rindex(")") + 2] == "Z":
            break
        time.sleep(0.05)
    assert procs.started_at(child.pid) is None
    child.wait()


# -- service managers ----------------------------------------------------------------------

def test_supervisord_status_and_restart(supervisor):
    manager = Supervisord(str(Path(sys.executable).parent / "supervisorctl"),
                          str(supervisor.config))
    assert manager.status("DagsterDaemon").status == RUNNING
    assert manager.status("Stopped").status == STOPPED
    assert manager.status("Nope").status == MISSING
    before = supervisor.pid("DagsterDaemon")
    result = manager.restart("DagsterDaemon")
    assert result.ok, result
    assert result.command == f"{manager.program} -c {supervisor.config} restart DagsterDaemon"
    assert supervisor.pid("DagsterDaemon") not in (0, before)
    failed = manager.restart("Nope")
    assert not failed.ok and "no such process" in failed.detail
    manager.check(["DagsterDaemon", "DagsterWebserver"])
    with pytest.raises(ServiceManagerError) as err:
        manager.check(["DagsterDaemon", "DagsterWebservr"])
    assert str(err.value) == (
        "supervisord does not know service 'DagsterWebservr' (DagsterWebservr: ERROR (no such "
        "process)); install it or fix dagpg.services in config.yml")


def test_supervisord_that_requires_a_password_is_no_permission(tmp_path):
    sup = Supervisor(tmp_path / "auth", {"DagsterDaemon": Program(SLEEP)}, auth=True).start()
    try:
        manager = Supervisord(str(Path(sys.executable).parent / "supervisorctl"),
                              str(sup.config))
        with pytest.raises(ServiceManagerError) as err:
            manager.check(["DagsterDaemon"])
        assert str(err.value).startswith(
            "no permission to manage 'DagsterDaemon' through supervisord: Server requires "
            "authentication")
    finally:
        sup.kill_all()


def fake_servy(tmp_path: Path, services: dict[str, str]) -> Servy:
    state = tmp_path / "servy.json"
    state.write_text(json.dumps(services), encoding="utf-8")
    script = tmp_path / "servy-cli"
    script.write_text(f"#!/bin/sh\nexec {sys.executable} "
                      f"{Path(__file__).parent / 'fake_servy_cli.py'} \"$@\"\n")
    script.chmod(0o755)
    os.environ["FAKE_SERVY_STATE"] = str(state)
    return Servy(str(script))


def test_servy_commands_follow_servy_cli(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_SERVY_STATE", "")
    servy = fake_servy(tmp_path, {"DagsterDaemon": "Running", "DagsterWebserver": "Stopped"})
    assert servy.status("DagsterDaemon").status == RUNNING
    assert servy.status("DagsterWebserver").status == STOPPED
    assert servy.status("Nope").status == MISSING
    assert servy.describe("DagsterDaemon") == (
        f"{tmp_path / 'servy-cli'} restart --name=DagsterDaemon --quiet")
    assert servy.restart("DagsterWebserver").ok
    failed = servy.restart("Nope")
    assert (failed.ok, failed.detail) == (False, "The specified service was not found.")
    calls = [json.loads(x) for x in (tmp_path / "servy.json.calls").read_text().splitlines()]
    assert calls[-2:] == [["restart", "--name=DagsterWebserver", "--quiet"],
                          ["restart", "--name=Nope", "--quiet"]]
    with pytest.raises(ServiceManagerError) as err:  # this is Linux
        servy.check(["DagsterDaemon"])
    assert str(err.value).startswith("Servy manages Windows services")


def test_systemd_reads_systemctl_show(tmp_path):
    script = tmp_path / "systemctl"
    script.write_text("#!/bin/sh\n"
                      'case "$5$6$7$8" in *Dagster*) state=active; load=loaded;; '
                      "*) state=inactive; load=not-found;; esac\n"
                      'echo "LoadState=$load"; echo "ActiveState=$state"; echo "SubState=x"\n')
    script.chmod(0o755)
    systemd = Systemd(str(script))
    assert systemd.status("DagsterDaemon").status == RUNNING
    assert systemd.status("nope").status == MISSING
    assert systemd.describe("DagsterDaemon") == f"{script} restart DagsterDaemon.service"
    with pytest.raises(ServiceManagerError) as err:
        Systemd("/nonexistent/systemctl").check(["DagsterDaemon"])
    assert str(err.value) == ("/nonexistent/systemctl not found: install systemd, or set "
                              "dagpg.watch.systemctl in config.yml to its path")


# -- startup refusals: one line, exit code 2 ------------------------------------------------

def watch_check(config: Path, dagster_home) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["watch", "--check"],
                                env={"DAGPG_CONFIG": str(config),
                                     "DAGSTER_HOME": str(dagster_home.home)})
    return result.exit_code, result.output


def test_bad_configuration_is_one_line_and_exit_2(dagster_home, supervisor, tmp_path):
    ctl = str(Path(sys.executable).parent / "supervisorctl")
    code, out = watch_check(write_config(tmp_path / "a.yml", service_manager="nssm"),
                            dagster_home)
    assert code == 2
    assert out == (f"Error: {tmp_path / 'a.yml'}: dagpg.watch.service_manager: value error, "
                   "unknown service manager; choose one of servy, systemd, supervisord, got "
                   "'nssm' (PROJECT_ENV=dev)\n")
    config = tmp_path / "b.yml"
    config.write_text("dagpg:\n  access:\n    enabled: false\n  services:\n"
                      "    daemon: DagsterDeamon\n  watch:\n"
                      f"    service_manager: supervisord\n    supervisorctl: {ctl}\n"
                      f"    supervisor_config: {supervisor.config}\n", encoding="utf-8")
    code, out = watch_check(config, dagster_home)
    assert (code, out) == (2, "Error: supervisord does not know service 'DagsterDeamon' "
                              "(DagsterDeamon: ERROR (no such process)); install it or fix "
                              "dagpg.services in config.yml\n")
    # dagpg.access on (the default): the viewers' read-only webserver is a service of its own.
    config = tmp_path / "b2.yml"
    config.write_text("dagpg:\n  watch:\n    service_manager: supervisord\n"
                      f"    supervisorctl: {ctl}\n    supervisor_config: {supervisor.config}\n",
                      encoding="utf-8")
    code, out = watch_check(config, dagster_home)
    assert (code, out) == (2, "Error: supervisord does not know service "
                              "'DagsterWebserverReadOnly' (DagsterWebserverReadOnly: ERROR (no "
                              "such process)); install it or fix dagpg.services in config.yml; "
                              "dagpg.access is enabled, so the viewers' read-only webserver is "
                              "a service of its own; with one webserver, set "
                              "dagpg.access.enabled: false\n")
    auth = Supervisor(tmp_path / "auth", {"DagsterDaemon": Program(SLEEP)}, auth=True).start()
    try:
        code, out = watch_check(write_config(tmp_path / "c.yml", service_manager="supervisord",
                                             supervisorctl=ctl,
                                             supervisor_config=str(auth.config)), dagster_home)
    finally:
        auth.kill_all()
    assert code == 2 and len(out.splitlines()) == 1
    assert out.startswith("Error: no permission to manage 'DagsterWebserver' through "
                          "supervisord: Server requires authentication")
    code, out = watch_check(write_config(tmp_path / "d.yml", service_manager="systemd",
                                         systemctl="/nonexistent/systemctl"), dagster_home)
    assert (code, len(out.splitlines())) == (2, 1) and "systemctl not found" in out


def test_a_service_manager_that_does_not_answer_says_what_to_do(dagster_home, tmp_path):
    """supervisorctl pointed at a supervisord that is not running: one line, what to do."""
    conf = tmp_path / "sv.conf"
    conf.write_text(f"[supervisorctl]\nserverurl=unix://{tmp_path / 'none.sock'}\n",
                    encoding="utf-8")
    code, out = watch_check(write_config(
        tmp_path / "f.yml", service_manager="supervisord", supervisor_config=str(conf),
        supervisorctl=str(Path(sys.executable).parent / "supervisorctl")), dagster_home)
    assert (code, out) == (2, "Error: cannot ask supervisord about service 'DagsterWebserver': "
                              f"unix://{tmp_path / 'none.sock'} no such file; start "
                              "supervisord, or set dagpg.watch.supervisor_config to the config "
                              "file of the supervisord that runs the services\n")


def test_a_database_without_the_keepers_tables_is_refused(empty_dagster_home, supervisor,
                                                         tmp_path):
    config = write_config(tmp_path / "e.yml", service_manager="supervisord",
                          supervisorctl=str(Path(sys.executable).parent / "supervisorctl"),
                          supervisor_config=str(supervisor.config),
                          log_dir=str(tmp_path / "logs"))
    code, out = watch_check(config, empty_dagster_home)
    assert (code, out) == (2, "Error: the keeper's tables are missing in "
                              f"{empty_dagster_home.target.url()} (dagpg schema not at head): "
                              "run `dagpg db upgrade`\n")


# -- the restart budget -----------------------------------------------------------------------

def test_a_service_that_never_comes_back_is_restarted_at_most_the_budget(
        dagster_home, supervisor, tmp_path):
    ctl = str(Path(sys.executable).parent / "supervisorctl")
    config = write_config(
        tmp_path / "watch.yml", service_manager="supervisord", supervisorctl=ctl,
        supervisor_config=str(supervisor.config), interval_s=0.2, failures_before_restart=2,
        max_restarts_per_hour=2, restart_grace_s=0.5, webserver_timeout_s=1,
        log_dir=str(tmp_path / "logs"))
    settings = load_settings(config)
    # The "daemon" and the "webserver" are `sleep`: running, but no heartbeat, no answer.
    keeper = Keeper(settings, dagster_home=dagster_home.home, once=True)
    keeper.start()
    pids = {name: [supervisor.pid(name)] for name in ("DagsterDaemon", "DagsterWebserver")}
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            result = keeper.run_pass()
            for name in pids:
                if supervisor.pid(name) != pids[name][-1]:
                    pids[name].append(supervisor.pid(name))
            if {"DagsterDaemon", "DagsterWebserver"} <= set(keeper.gave_up):
                break
            time.sleep(0.2)
        for _ in range(5):  # and it stays given up
            result = keeper.run_pass()
            assert not result.actions
    finally:
        keeper.close()
    records = jsonlog.read(tmp_path / "logs" / jsonlog.FILE_NAME)
    restarts = [r for r in records if r["event"] == "action"]
    assert sorted(r["target"] for r in restarts) == [
        "DagsterDaemon", "DagsterDaemon", "DagsterWebserver", "DagsterWebserver"]
    assert all(r["data"]["ok"] for r in restarts)
    assert {name: len(p) for name, p in pids.items()} == {"DagsterDaemon": 3,
                                                         "DagsterWebserver": 3}
    gave_up = [r for r in records if r["event"] == "gave_up"]
    assert [(r["target"], r["level"]) for r in sorted(gave_up, key=lambda r: r["target"])] == [
        ("DagsterDaemon", "error"), ("DagsterWebserver", "error")]
    assert gave_up[0]["detail"].endswith(
        "restarted 2 times in the last hour (dagpg.watch.max_restarts_per_hour: 2) and still "
        "fails: the keeper stops restarting it; find the cause in its log, fix it, restart it "
        "by hand")
    # The backoff: the second restart of each came at least restart_grace_s after the first.
    for name in pids:
        times = [datetime.fromisoformat(r["ts"]) for r in restarts if r["target"] == name]
        assert (times[1] - times[0]).total_seconds() >= 0.5
    # dagpg verify reports it.
    result = checks.keeper(checks.KeeperObservation(rows=read_keepers(dagster_home.resolve())),
                           now=datetime.now(UTC))
    assert result.status == checks.FAIL
    assert "gave up restarting DagsterDaemon (2 restarts in the last hour)" in result.detail


def test_after_an_hour_it_acts_again_and_gives_up_loudly_again(dagster_home, supervisor,
                                                              tmp_path):
    """The budget frees up an hour after the restarts it counted: the keeper restarts again,
    `dagpg verify` no longer says it gave up, and when that restart does not help either it
    reports giving up again (a log line at level error, not silence)."""
    from dagpg import pg

    ctl = str(Path(sys.executable).parent / "supervisorctl")
    config = write_config(
        tmp_path / "watch.yml", service_manager="supervisord", supervisorctl=ctl,
        supervisor_config=str(supervisor.config), interval_s=0.2, failures_before_restart=1,
        max_restarts_per_hour=1, restart_grace_s=0, webserver_timeout_s=1,
        log_dir=str(tmp_path / "logs"))
    keeper = Keeper(load_settings(config), dagster_home=dagster_home.home, once=True)
    keeper.start()

    def until_given_up() -> None:
        deadline = time.monotonic() + 60
        while "DagsterDaemon" not in keeper.gave_up and time.monotonic() < deadline:
            keeper.run_pass()
        assert "DagsterDaemon" in keeper.gave_up

    def gave_up() -> list[dict]:
        return [r for r in jsonlog.read(tmp_path / "logs" / jsonlog.FILE_NAME)
                if r["event"] == "gave_up" and r["target"] == "DagsterDaemon"]

    try:
        until_given_up()
        assert len(gave_up()) == 1
        with pg.connection(dagster_home.target) as conn, conn.cursor() as cur:
            cur.execute("UPDATE dagpg.keeper_actions SET at = at - interval '2 hours'")
        result = keeper.run_pass()
        assert [a.target for a in result.actions if a.target == "DagsterDaemon"] \
            == ["DagsterDaemon"]
        assert "DagsterDaemon" not in keeper.gave_up
        until_given_up()
    finally:
        keeper.close()
    assert len(gave_up()) == 2
    assert all(r["level"] == "error" for r in gave_up())


def test_a_webserver_that_answers_under_another_prefix_is_reported_not_restarted(
        dagster_home, supervisor, tmp_path):
    """HTTP 404 at <prefix>/server_info: the webserver is alive but misconfigured (the path
    prefix in config.yml is not its --path-prefix); a restart cannot help."""
    import http.server
    import threading

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802  (http.server's name)
            self.send_error(404)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    ctl = str(Path(sys.executable).parent / "supervisorctl")
    config = tmp_path / "watch.yml"
    config.write_text(
        "dagpg:\n  access:\n    enabled: false\n  webserver:\n"
        f"    port: {server.server_address[1]}\n    path_prefix: /dagster\n  watch:\n"
        f"    service_manager: supervisord\n    supervisorctl: {ctl}\n"
        f"    supervisor_config: {supervisor.config}\n    failures_before_restart: 1\n"
        f"    restart_grace_s: 0\n    webserver_timeout_s: 2\n"
        f"    log_dir: {tmp_path / 'logs'}\n", encoding="utf-8")
    keeper = Keeper(load_settings(config), dagster_home=dagster_home.home, once=True)
    keeper.start()
    before = supervisor.pid("DagsterWebserver")
    try:
        for _ in range(3):
            keeper.run_pass()
    finally:
        keeper.close()
        server.shutdown()
    assert supervisor.pid("DagsterWebserver") == before
    records = jsonlog.read(tmp_path / "logs" / jsonlog.FILE_NAME)
    assert not [r for r in records if r["event"] == "action"
                and r["target"] == "DagsterWebserver"]
    found = [r for r in records if r["event"] == "finding" and r["target"] == "DagsterWebserver"]
    assert found and all(r["level"] == "warning" for r in found)
    assert "HTTP 404" in found[0]["detail"]


# -- one keeper acts; the log; the loop -------------------------------------------------------

def keeper_config(tmp_path: Path, supervisor: Supervisor, **extra) -> Path:
    settings = dict(service_manager="supervisord",
                    supervisorctl=str(Path(sys.executable).parent / "supervisorctl"),
                    supervisor_config=str(supervisor.config), interval_s=0.2,
                    restart_grace_s=3600, webserver_timeout_s=1, log_dir=str(tmp_path / "logs"))
    return write_config(tmp_path / "watch.yml", **{**settings, **extra})


def test_two_keepers_never_act_at_once(dagster_home, supervisor, tmp_path):
    settings = load_settings(keeper_config(tmp_path, supervisor))
    first = Keeper(settings, dagster_home=dagster_home.home)
    second = Keeper(settings, dagster_home=dagster_home.home)
    first.start()
    second.start()
    try:
        assert first.run_pass().acting is True
        standby = second.run_pass()
        assert standby.acting is False and not standby.checks
        assert [e.event for e in standby.events] == ["standby"]
        assert standby.events[0].detail.startswith(
            f"another keeper acts: keeper pid {os.getpid()} on {os.uname().nodename} "
            "(database session ")
        assert second.run_pass().events == []  # said once
        first.close()  # its lock goes with its connection
        assert second.run_pass().acting is True
    finally:
        first.close()
        second.close()


def test_the_log_rotates(dagster_home, supervisor, tmp_path):
    settings = load_settings(keeper_config(tmp_path, supervisor, log_max_bytes=10_000,
                                           log_backups=2, failures_before_restart=1000))
    keeper = Keeper(settings, dagster_home=dagster_home.home, once=True)
    keeper.start()
    try:
        for _ in range(30):  # each pass logs the silent webserver and the missing heartbeats
            keeper.run_pass()
    finally:
        keeper.close()
    logs = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert logs == ["watch.jsonl", "watch.jsonl.1", "watch.jsonl.2"]
    assert all((tmp_path / "logs" / n).stat().st_size <= 12_000 for n in logs)
    for name in logs:  # whole JSON lines in every file
        jsonlog.read(tmp_path / "logs" / name)


def test_watch_once_and_the_service_loop(dagster_home, supervisor, tmp_path):
    config = keeper_config(tmp_path, supervisor, interval_s=1)
    env = {"DAGPG_CONFIG": str(config), "DAGSTER_HOME": str(dagster_home.home)}
    result = CliRunner().invoke(cli, ["watch", "--check"], env=env)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith(f"dagpg watch: keeper of {dagster_home.target.url()}")
    assert lines[1] == (
        "  daemon DagsterDaemon: every required daemon's heartbeat younger than 90 s; after 2 "
        "failed passes, "
        f"at most 3 times an hour: {Path(sys.executable).parent / 'supervisorctl'} -c "
        f"{supervisor.config} restart DagsterDaemon")
    # --once: the "webserver" (sleep) does not answer: a finding, exit code 1, JSON lines.
    result = CliRunner().invoke(cli, ["watch", "--once", "--json"], env=env)
    assert result.exit_code == 1, result.output
    events = [json.loads(line) for line in result.output.splitlines()]
    assert {(e["event"], e["target"]) for e in events} >= {("finding", "DagsterWebserver"),
                                                           ("finding", "DagsterDaemon")}
    # The service: SIGTERM (a service stop) ends it after its pass, exit code 0.
    proc = subprocess.Popen([str(Path(sys.executable).parent / "dagpg"), "watch"],
                            env={**os.environ, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        log_path = tmp_path / "logs" / jsonlog.FILE_NAME
        while time.monotonic() < deadline:
            mine = [r for r in jsonlog.read(log_path) if r["pid"] == proc.pid]
            if any((r["pass"] or 0) >= 2 for r in mine) or any(
                    r["event"] == "startup" for r in mine):
                break
            time.sleep(0.2)
        proc.send_signal(15)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert out.splitlines()[0].startswith("dagpg watch: keeper of ")
    assert [r["event"] for r in jsonlog.read(log_path) if r["pid"] == proc.pid][-1] == "stop"


def test_verify_judges_the_keepers_heartbeat():
    from dagpg.watch.store import KeeperRow

    now = datetime.now(UTC)

    def row(age_s: float, **state) -> KeeperRow:
        return KeeperRow("gis-server", 4242, now, now - timedelta(seconds=age_s), 30.0, 9, state)

    result = checks.keeper(checks.KeeperObservation(rows=[]), now=now)
    assert result.status == checks.WARN and result.detail.startswith(
        "no keeper has run against this instance")
    assert checks.keeper(checks.KeeperObservation(rows=[row(89)]), now=now).detail == (
        "the keeper on gis-server (pid 4242) passed 89 s ago (every 30 s)")
    stale = checks.keeper(checks.KeeperObservation(rows=[row(91)]), now=now)
    assert (stale.status, stale.detail) == (
        checks.FAIL, "the keeper on gis-server (pid 4242) last passed 91 s ago (limit 3 x 30 s): "
        "is the DagsterKeeper service running? see its log, reports/logs/watch.jsonl")
    assert checks.keeper(None).status == checks.SKIP


def test_verify_points_at_the_configured_keeper_service_and_log(dagster_home, tmp_path):
    """A stale keeper: `dagpg verify` names the keeper's service (dagpg.services.keeper) and
    its log (dagpg.watch.log_dir) as config.yml has them, not the defaults."""
    from dagpg import pg

    config = tmp_path / "config" / "config.yml"
    config.parent.mkdir()
    config.write_text(f"dagpg:\n  access:\n    enabled: false\n  webserver:\n    port: "
                      f"{free_port()}\n  services:\n    keeper: GisKeeper\n  watch:\n"
                      "    log_dir: var/keeper-logs\n", encoding="utf-8")
    with pg.connection(dagster_home.target) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO dagpg.keeper (host, pid, started_at, last_pass_at, interval_s, "
                    "passes, state) VALUES ('gis-server', 4242, now() - interval '1 hour', "
                    "now() - interval '10 minutes', 30, 9, '{}')")
    result = CliRunner().invoke(cli, ["verify", "--json"], env={
        "DAGPG_CONFIG": str(config), "DAGSTER_HOME": str(dagster_home.home)})
    keeper = {c["name"]: c for c in json.loads(result.stdout)["checks"]}["keeper.heartbeat"]
    assert keeper["status"] == "fail"
    assert keeper["detail"].endswith(
        "is the GisKeeper service running? see its log, "
        f"{tmp_path / 'var' / 'keeper-logs' / 'watch.jsonl'}"), keeper["detail"]


def test_a_dead_keepers_lingering_session_is_taken_over(dagster_home, supervisor, tmp_path):
    """After a reboot, PostgreSQL may keep the old keeper's session (and its lock) until TCP
    keepalive notices: the new keeper of the same host ends it. A live holder is left alone."""
    from dagpg import pg
    from dagpg.watch.store import APP, LOCK_KEY

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    settings = load_settings(keeper_config(tmp_path, supervisor))
    for holder_pid, taken in ((os.getpid(), False), (dead.pid, True)):
        ghost = pg.connect(dagster_home.target, autocommit=True)
        with ghost.cursor() as cur:
            cur.execute("SET application_name = %s",
                        (f"{APP} {os.uname().nodename} {holder_pid}",))
            cur.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,))
            assert cur.fetchone()[0]
        keeper = Keeper(settings, dagster_home=dagster_home.home)
        keeper.start()
        try:
            result = keeper.run_pass()
        finally:
            keeper.close()
        assert result.acting is taken
        if taken:
            assert result.events[0].event == "took_over"
            assert result.events[0].detail.startswith(
                f"took over the keeper lock: keeper pid {dead.pid} on {os.uname().nodename} "
                "no longer runs; its database session ")
            with pytest.raises(Exception):  # noqa: B017  (its session was ended)
                with ghost.cursor() as cur:
                    cur.execute("SELECT 1")
        else:
            assert [e.event for e in result.events] == ["standby"]
        ghost.close()


def test_a_finished_run_holding_pool_slots_is_reported_once(dagster_home, supervisor, tmp_path):
    """Dagster fails a run whose worker was killed alone but leaves its pool slots claimed; it
    frees them only with run_monitoring.free_slots_after_run_end_seconds. Without that setting
    the keeper says so (it does not act on runs Dagster ended)."""
    from dagster import DagsterInstance, DagsterRun, DagsterRunStatus

    settings = load_settings(keeper_config(tmp_path, supervisor))
    with DagsterInstance.from_config(str(dagster_home.home)) as instance:
        storage = instance.event_log_storage
        storage.set_concurrency_slots("keeper_pool", 1)
        run = instance.add_run(DagsterRun(job_name="nap_job", status=DagsterRunStatus.FAILURE))
        assert storage.claim_concurrency_slot("keeper_pool", run.run_id, "nap").is_claimed
        keeper = Keeper(settings, dagster_home=dagster_home.home, once=True)
        keeper.start()
        try:
            first, second = keeper.run_pass(), keeper.run_pass()
        finally:
            keeper.close()
        leaks = [e for e in first.events if e.target == run.run_id]
        assert [(e.event, e.level) for e in leaks] == [("finding", "warning")]
        assert leaks[0].detail.startswith(f"run {run.run_id} (FAILURE) ended but still holds "
                                          "pool slots")
        assert not [e for e in second.events if e.target == run.run_id]
        assert not first.actions
        assert storage.get_concurrency_info("keeper_pool").active_run_ids == {run.run_id}


def test_a_worker_older_than_the_boot_is_gone_at_once(dagster_home):
    """The run worker's pid from its own engine event, judged against this machine's boot time
    (passed in: a reboot cannot be staged here) and the process table."""
    from dagster import DagsterInstance, DagsterRun, DagsterRunStatus
    from dagster._core.events import EngineEventData

    from dagpg.watch.orphans import OrphanFinder

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with DagsterInstance.from_config(str(dagster_home.home)) as instance:
        runs = {}
        for name, pid in (("alive", os.getpid()), ("dead", dead.pid)):
            run = instance.add_run(DagsterRun(job_name=name, status=DagsterRunStatus.STARTED))
            instance.report_engine_event(f"Started process for run (pid: {pid}).", run,
                                         EngineEventData.in_process(pid))
            runs[name] = run.run_id
        finder = OrphanFinder(instance, starting_timeout_s=600)
        now = time.time()
        found = {o.job_name: o for o in finder.find(boot=procs.boot_time(), now=now)}
        assert set(found) == {"dead"}
        assert not found["dead"].before_boot and found["dead"].pid == dead.pid
        assert f"no process {dead.pid} runs on this host" in found["dead"].reason
        # As if the machine had booted after the workers started: both are gone, at once.
        after_reboot = {o.job_name: o for o in finder.find(boot=now + 1, now=now + 2)}
        assert set(after_reboot) == {"alive", "dead"}
        assert all(o.before_boot for o in after_reboot.values())
        assert "did not survive the reboot" in after_reboot["alive"].reason


def test_a_starting_run_whose_code_server_is_gone_is_ended(dagster_home, supervisor, tmp_path):
    """A run left STARTING with no worker: its launch waited on a code server that is gone
    (nothing accepts connections at its `.dagster/grpc_info` address), so no worker will come;
    the keeper ends it in its pass. One whose code server still listens is left alone, and so is
    one without that tag (Dagster's run monitoring or starting_timeout_s handles it)."""
    import socket as sockets

    from dagster import DagsterEventType, DagsterInstance, DagsterRun, DagsterRunStatus
    from dagster._core.storage.tags import GRPC_INFO_TAG

    listening = sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM)
    listening.bind(str(tmp_path / "live.sock"))
    listening.listen()
    dead = sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM)
    dead.bind(str(tmp_path / "dead.sock"))  # a code server killed: its socket file stays
    dead.close()
    servers = {"dead_socket": {"host": "localhost", "socket": str(tmp_path / "dead.sock")},
               "dead_port": {"host": "localhost", "port": free_port()},
               "live": {"host": "localhost", "socket": str(tmp_path / "live.sock")},
               "untagged": None}
    settings = load_settings(keeper_config(tmp_path, supervisor, orphan_settle_s=0.5))
    try:
        with DagsterInstance.from_config(str(dagster_home.home)) as instance:
            runs = {}
            for name, info in servers.items():
                tags = {GRPC_INFO_TAG: json.dumps(info)} if info else {}
                run = instance.add_run(DagsterRun(job_name=name, tags=tags,
                                                  status=DagsterRunStatus.STARTING))
                runs[name] = run.run_id
            keeper = Keeper(settings, dagster_home=dagster_home.home, once=True)
            keeper.start()
            try:
                result = keeper.run_pass()
            finally:
                keeper.close()
            ended = {a.data["job"]: a for a in result.actions if a.target in runs.values()}
            assert set(ended) == {"dead_socket", "dead_port"}
            assert "and the code server that launched it" in ended["dead_socket"].detail
            status = {name: instance.get_run_by_id(run_id).status for name, run_id in runs.items()}
            assert status == {"dead_socket": DagsterRunStatus.FAILURE,
                              "dead_port": DagsterRunStatus.FAILURE,
                              "live": DagsterRunStatus.STARTING,
                              "untagged": DagsterRunStatus.STARTING}
            notes = [e.dagster_event.message for e in instance.all_logs(
                runs["dead_socket"], of_type=DagsterEventType.ENGINE_EVENT)]
            assert [n for n in notes if n.startswith("[dagpg watch] No run worker reported")]
    finally:
        listening.close()
