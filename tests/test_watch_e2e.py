"""The keeper end to end: a real supervisord (standing in for Servy) runs the real
dagster-webserver, dagster-daemon and `dagpg watch` against the test PostgreSQL; faults are
provoked for real (SIGKILL, SIGSTOP, a staged reboot) and the keeper must heal them, and
nothing else. The tests share one stack and run in order; each leaves it healthy.

Intervals are shortened (a pass every 2 s); the heartbeat limit stays above the SCHEDULER
daemon's once-a-minute beat (75 s), so the freeze is seen as late as it would be in production.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from dagpg import pg
from dagpg.cli import cli
from dagpg.localdb import free_port
from dagpg.watch import jsonlog
from tests import pgharness, processes
from tests.supervisor import BIN, Program, Supervisor

pytestmark = pytest.mark.slow

DEFINITIONS = Path(__file__).resolve().parent / "watch_definitions.py"
HEARTBEAT_MAX_AGE_S = 75
# As dagster_home/dagster.yaml has it, quicker: Dagster frees the pool slots of finished runs.
RUN_MONITORING = """run_monitoring:
  enabled: true
  poll_interval_seconds: 5
  free_slots_after_run_end_seconds: 5
"""
_PID = re.compile(r"Started process for run \(pid: (\d+)\)")


@dataclass
class Stack:
    root: Path
    home: Path
    target: object
    port: int
    sup: Supervisor
    env: dict[str, str]
    marker: Path
    instance: object = None  # a DagsterInstance in the test process

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.root / "logs" / jsonlog.FILE_NAME

    def records(self) -> list[dict]:
        return jsonlog.read(self.log_path)


@pytest.fixture(scope="module")
def stack(pg_server, template_database, tmp_path_factory):
    import dagster as dg

    root = tmp_path_factory.mktemp("watch")
    password = pg_server.admin.password or ""
    database = pg_server.create_database(template=template_database)
    target = pg_server.target(database)
    home = pgharness.write_dagster_home(root / "dagster_home", target, extra=RUN_MONITORING)
    yaml_path = home / "dagster.yaml"
    yaml_path.write_text(yaml_path.read_text().replace("max_concurrent_runs: 4",
                                                       "max_concurrent_runs: 2"))
    workspace = root / "workspace.yaml"
    workspace.write_text(f"load_from:\n  - python_file:\n      relative_path: {DEFINITIONS}\n"
                         "      attribute: defs\n", encoding="utf-8")
    port = free_port()
    sup_root = root / "sv"
    config = root / "config" / "config.yml"
    config.parent.mkdir()
    config.write_text(f"""dagpg:
  access:
    enabled: false
  webserver:
    port: {port}
    path_prefix: ""
  watch:
    interval_s: 2
    service_manager: supervisord
    supervisorctl: {BIN / 'supervisorctl'}
    supervisor_config: {sup_root / 'supervisord.conf'}
    heartbeat_max_age_s: {HEARTBEAT_MAX_AGE_S}
    restart_grace_s: 45
    orphan_settle_s: 3
    webserver_timeout_s: 5
    log_dir: {root / 'logs'}
""", encoding="utf-8")
    marker = root / "schedule-marker"
    base_env = {"DAGSTER_HOME": str(home), "WATCH_TEST_MARKER": str(marker),
                "WATCH_TEST_SENSOR_DIR": str(root / "sensor"), "DAGPG_CONFIG": str(config),
                "PROJECT_ENV": "dev"}
    programs = {
        "DagsterWebserver": Program(f"{BIN / 'dagster-webserver'} -w {workspace} "
                                    f"-h 127.0.0.1 -p {port}", environment=base_env),
        "DagsterDaemon": Program(f"{BIN / 'dagster-daemon'} run -w {workspace}",
                                 environment=base_env),
        "DagsterKeeper": Program(f"{BIN / 'dagpg'} watch", environment=base_env),
    }
    sup = Supervisor(sup_root, programs)
    env = {"DAGSTER_PG_PASSWORD": password}
    stack = Stack(root, home, target, port, sup, env, marker)
    try:
        sup.start(env)
        os.environ["DAGSTER_PG_PASSWORD"] = password
        stack.instance = dg.DagsterInstance.from_config(str(home))
        stack.instance.event_log_storage.set_concurrency_slots("keeper_pool", 2)
        wait_healthy(stack)
        yield stack
    finally:
        sup.kill_all()
        if stack.instance is not None:
            stack.instance.dispose()
        pg_server.drop_database(database)


# -- helpers -------------------------------------------------------------------------------

def wait_healthy(stack: Stack, timeout: float = 180) -> None:
    processes.wait_for(lambda: processes.http_json(f"{stack.url}/server_info"), timeout,
                       "the webserver's /server_info")
    processes.wait_for(lambda: fresh_heartbeats(stack, since=time.time() - 60), timeout,
                       "a fresh heartbeat from every required daemon")


def heartbeats(stack: Stack) -> dict[str, float]:
    with pg.connection(stack.target) as conn, conn.cursor() as cur:
        cur.execute("SELECT daemon_type, timestamp FROM daemon_heartbeats")
        return {t: ts.replace(tzinfo=UTC).timestamp() for t, ts in cur.fetchall()}


def fresh_heartbeats(stack: Stack, since: float) -> bool:
    required = stack.instance.get_required_daemon_types()
    beats = heartbeats(stack)
    return all(beats.get(t, 0) > since for t in required)


def graphql(stack: Stack, query: str, variables: dict | None = None) -> dict:
    request = urllib.request.Request(
        f"{stack.url}/graphql", data=json.dumps({"query": query,
                                                 "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as resp:
        return json.loads(resp.read())["data"]


def launch(stack: Stack, seconds: float) -> str:
    entries = graphql(stack, """{ workspaceOrError { ... on Workspace { locationEntries { name
        locationOrLoadError { ... on RepositoryLocation { repositories { name } } } } } } }""")
    entry = entries["workspaceOrError"]["locationEntries"][0]
    repository = entry["locationOrLoadError"]["repositories"][0]["name"]
    query = """mutation($p: ExecutionParams!) { launchRun(executionParams: $p) {
      __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }"""
    params = {"selector": {"repositoryLocationName": entry["name"],
                           "repositoryName": repository, "jobName": "nap_job"},
              "runConfigData": {"ops": {"nap": {"config": {"seconds": seconds}}}}}
    answer = graphql(stack, query, {"p": params})["launchRun"]
    assert answer["__typename"] == "LaunchRunSuccess", answer
    return answer["run"]["runId"]


def status(stack: Stack, run_id: str) -> str:
    return stack.instance.get_run_by_id(run_id).status.value


def wait_status(stack: Stack, run_id: str, wanted: set[str], timeout: float = 180) -> str:
    return processes.wait_for(lambda: status(stack, run_id) in wanted and status(stack, run_id),
                              timeout, f"run {run_id} in {wanted}")


def worker_pid(stack: Stack, run_id: str) -> int | None:
    """The run worker's pid, read independently of the keeper: the worker's own message."""
    from dagster import DagsterEventType

    for entry in stack.instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
        if match := _PID.search(entry.dagster_event.message or ""):
            return int(match.group(1))
    return None


def wait_worker(stack: Stack, run_id: str, timeout: float = 180) -> int:
    return processes.wait_for(lambda: status(stack, run_id) == "STARTED"
                              and worker_pid(stack, run_id), timeout,
                              f"run {run_id}'s worker")


def events(stack: Stack, run_id: str, kind) -> list:
    return stack.instance.all_logs(run_id, of_type=kind)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2] not in "ZX"


def actions(stack: Stack, since: float = 0) -> list[dict]:
    return [r for r in stack.records() if r["event"] in ("action", "gave_up")
            and datetime.fromisoformat(r["ts"]).timestamp() >= since]


# -- the tests, in order -------------------------------------------------------------------

def test_healthy_deployment_gets_no_action_and_a_lone_killed_worker_is_left_to_dagster(stack):
    from dagster import DagsterEventType

    started = time.time()
    startup = [r for r in stack.records() if r["event"] == "startup"]
    assert startup and "supervisorctl" in startup[-1]["data"]["services"]["daemon"]["restart"]
    long_run = launch(stack, 15)
    lone = launch(stack, 300)
    wait_worker(stack, long_run)
    pid = wait_worker(stack, lone)
    os.kill(pid, signal.SIGKILL)
    killed_at = time.time()
    wait_status(stack, lone, {"FAILURE"}, timeout=60)
    failures = events(stack, lone, DagsterEventType.RUN_FAILURE)
    assert len(failures) == 1
    seen = [e for e in events(stack, lone, DagsterEventType.ENGINE_EVENT)
            if "was terminated by signal 9" in (e.dagster_event.message or "")]
    assert seen and seen[0].dagster_event.message.startswith(
        f"[DagsterApiServer] Run execution process for {lone} was terminated by signal 9")
    print(f"\nDagster's code server failed the run {failures[0].timestamp - killed_at:.2f} s "
          "after its worker was killed")
    # Dagster's failure leaves the run's pool slot claimed; its run monitoring frees it.
    processes.wait_for(lambda: lone not in stack.instance.event_log_storage.get_concurrency_info(
        "keeper_pool").active_run_ids, 90, "Dagster to free the killed run's pool slot")
    assert wait_status(stack, long_run, {"SUCCESS", "FAILURE"}) == "SUCCESS"
    time.sleep(5)  # a few more passes, after both runs ended
    assert not [e for e in events(stack, lone, DagsterEventType.ENGINE_EVENT)
                if "[dagpg watch]" in (e.dagster_event.message or "")]
    records = [r for r in stack.records()
               if datetime.fromisoformat(r["ts"]).timestamp() >= started]
    assert [r for r in records if r["event"] != "startup"] == []
    with pg.connection(stack.target) as conn, conn.cursor() as cur:
        cur.execute("SELECT passes, now() - last_pass_at FROM dagpg.keeper")
        passes, age = cur.fetchone()
    assert passes >= 10 and age.total_seconds() < 10
    # dagpg verify sees the keeper's heartbeat.
    result = CliRunner().invoke(cli, ["verify", "--json"], env={
        "DAGSTER_HOME": str(stack.home), "DAGPG_CONFIG": str(stack.root / "config" / "config.yml"),
        **stack.env})
    keeper = {c["name"]: c for c in json.loads(result.stdout)["checks"]}["keeper.heartbeat"]
    assert keeper["status"] == "ok", keeper
    assert keeper["detail"].endswith("(every 2 s)")


def test_runs_killed_with_their_daemon_are_failed_and_the_queue_moves(stack):
    from dagster import DagsterEventType

    since = time.time()
    runs = [launch(stack, 600), launch(stack, 600)]
    workers = [wait_worker(stack, r) for r in runs]
    queued = launch(stack, 0.1)
    time.sleep(2)
    assert status(stack, queued) == "QUEUED"  # max_concurrent_runs: 2
    info = stack.instance.event_log_storage.get_concurrency_info("keeper_pool")
    assert info.active_run_ids == set(runs)
    daemon = stack.sup.pid("DagsterDaemon")
    os.killpg(daemon, signal.SIGKILL)  # the daemon, its code server, the run workers
    processes.wait_for(lambda: not any(alive(p) for p in [daemon, *workers]), 30,
                       "the daemon's process group to die")
    for run_id in runs:
        assert wait_status(stack, run_id, {"FAILURE"}, timeout=120) == "FAILURE"
    for run_id, pid in zip(runs, workers, strict=True):
        assert len(events(stack, run_id, DagsterEventType.RUN_FAILURE)) == 1
        notes = [e.dagster_event.message for e in events(stack, run_id,
                 DagsterEventType.ENGINE_EVENT) if "[dagpg watch]" in (e.dagster_event.message
                                                                     or "")]
        assert len(notes) == 1
        assert f"Its run worker (pid {pid}, started " in notes[0]
        assert "is gone: no process" in notes[0] or "now is another program" in notes[0]
        assert notes[0].endswith(f"the keeper marks it failed (dagpg watch, pid "
                                 f"{stack.sup.pid('DagsterKeeper')} on {os.uname().nodename}).")
    info = stack.instance.event_log_storage.get_concurrency_info("keeper_pool")
    assert not (info.active_run_ids & set(runs))
    # The restarted daemon dequeues the waiting run, whose step gets a pool slot.
    assert wait_status(stack, queued, {"SUCCESS", "FAILURE"}, timeout=180) == "SUCCESS"
    # A run-failure sensor (run by the restarted daemon) sees both failures.
    seen = processes.wait_for(lambda: {p.name for p in (stack.root / "sensor").glob("*")}
                              >= set(runs) and True, 120, "the run-failure sensor")
    assert seen
    assert (stack.root / "sensor" / runs[0]).read_text().startswith("[dagpg watch] Its run")
    done = actions(stack, since)
    assert sorted((a["event"], a["target"]) for a in done) == sorted(
        ("action", r) for r in runs)
    assert all(a["data"]["now"] == "FAILURE" for a in done)


def test_a_frozen_daemon_is_restarted_and_the_schedule_fires_again(stack):
    since = time.time()
    wait_healthy(stack)
    stack.marker.write_text("fire")
    daemon = stack.sup.pid("DagsterDaemon")
    os.kill(daemon, signal.SIGSTOP)
    frozen_at = time.time()
    try:
        restart = processes.wait_for(
            lambda: [a for a in actions(stack, since) if a["target"] == "DagsterDaemon"],
            HEARTBEAT_MAX_AGE_S + 150, "the keeper to restart the frozen daemon")[0]
        restarted_at = datetime.fromisoformat(restart["ts"]).timestamp()
        assert restart["data"]["ok"] is True
        assert not alive(daemon)
        processes.wait_for(lambda: fresh_heartbeats(stack, since=restarted_at), 120,
                           "fresh heartbeats from the restarted daemon")
        fresh_at = time.time()
        print(f"\nfrozen -> restarted {restarted_at - frozen_at:.0f} s, -> fresh heartbeats "
              f"{fresh_at - frozen_at:.0f} s (heartbeat limit {HEARTBEAT_MAX_AGE_S} s, "
              "a pass every 2 s)")
        scheduled = processes.wait_for(lambda: [
            r for r in stack.instance.get_run_records()
            if r.dagster_run.tags.get("dagster/schedule_name") == "every_minute"
            and r.create_timestamp.timestamp() > restarted_at], 120,
            "a run from the schedule after the restart")
        assert scheduled
    finally:
        stack.marker.unlink(missing_ok=True)
        if alive(daemon):
            os.kill(daemon, signal.SIGCONT)
    findings = [r for r in stack.records() if r["event"] == "finding"
                and datetime.fromisoformat(r["ts"]).timestamp() >= since]
    assert findings and all(f["target"] == "DagsterDaemon" for f in findings)
    assert [a["target"] for a in actions(stack, since)] == ["DagsterDaemon"]


def test_after_a_reboot_the_first_pass_ends_every_orphaned_run(stack):
    wait_healthy(stack)
    runs = [launch(stack, 600), launch(stack, 600)]
    for run_id in runs:
        wait_worker(stack, run_id)
    # A run caught between its launch and its worker's first event: STARTING, launched through
    # the daemon's code server (the address Dagster tagged the running ones with).
    from dagster import DagsterRun, DagsterRunStatus
    from dagster._core.storage.tags import GRPC_INFO_TAG

    code_server = stack.instance.get_run_by_id(runs[0]).tags[GRPC_INFO_TAG]
    starting = stack.instance.add_run(DagsterRun(
        job_name="nap_job", status=DagsterRunStatus.STARTING,
        tags={GRPC_INFO_TAG: code_server})).run_id
    keeper_before = stack.sup.pid("DagsterKeeper")
    killed = stack.sup.kill_all()
    assert keeper_before in killed and len(killed) >= 6
    stack.sup.start(stack.env)
    new_keeper = processes.wait_for(
        lambda: (pid := stack.sup.pid("DagsterKeeper")) and pid != keeper_before and pid,
        60, "the keeper to start again")

    def first_pass_ended() -> set[str]:
        """The runs the new keeper's first pass ended, once it has ended all three (it writes a
        line per run: reading after the first line would race the other two)."""
        ended = {r["target"] for r in stack.records()
                 if r["pid"] == new_keeper and r["pass"] == 1 and r["event"] == "action"}
        return ended if ended >= {*runs, starting} else set()

    ended = processes.wait_for(first_pass_ended, 180, "the new keeper's first pass")
    assert ended == {*runs, starting}
    assert {status(stack, r) for r in [*runs, starting]} == {"FAILURE"}
    from dagster import RunsFilter

    assert not stack.instance.get_run_records(RunsFilter(
        statuses=[DagsterRunStatus.STARTED, DagsterRunStatus.STARTING]))
