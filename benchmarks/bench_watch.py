"""How long from a hung daemon to a working one, with the keeper's default settings.

    flock /tmp/dagpg-bench.lock .venv/bin/python benchmarks/bench_watch.py [--repeat 2]
        [--healthy-minutes 5]

Starts a throwaway PostgreSQL and a real supervisord (standing in for Servy) running
dagster-webserver, dagster-daemon and `dagpg watch` with dagpg.watch's defaults (a pass every
30 s, heartbeat limit 90 s, 2 passes, grace 90 s). First watches the healthy deployment for
--healthy-minutes while a long run executes and counts the keeper's actions (must be 0). Then,
--repeat times: SIGSTOP the daemon (alive, silent) and time freeze -> the keeper's restart ->
a fresh heartbeat from every required daemon. Prints each, the median, and the ratios against
the target (180 s) and against Dagster's own tolerance (dagster-daemon liveness-check accepts
heartbeats up to 1800 s old). One JSON line at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from dagpg import pg, schema  # noqa: E402
from dagpg.instance import resolve_instance  # noqa: E402
from dagpg.localdb import free_port  # noqa: E402
from dagpg.watch import jsonlog  # noqa: E402
from tests import pgharness, processes  # noqa: E402
from tests.supervisor import BIN, Program, Supervisor  # noqa: E402

DEFINITIONS = PROJECT / "tests" / "watch_definitions.py"
TARGET_S, DAGSTER_TOLERANCE_S = 180, 1800


def heartbeats(target) -> dict[str, float]:
    with pg.connection(target) as conn, conn.cursor() as cur:
        cur.execute("SELECT daemon_type, timestamp FROM daemon_heartbeats")
        return {t: ts.replace(tzinfo=UTC).timestamp() for t, ts in cur.fetchall()}


def actions(log: Path, since: float) -> list[dict]:
    return [r for r in jsonlog.read(log) if r["event"] in ("action", "gave_up")
            and datetime.fromisoformat(r["ts"]).timestamp() >= since]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--healthy-minutes", type=float, default=5)
    args = parser.parse_args()

    server, root = pgharness.start_throwaway()
    work = Path(tempfile.mkdtemp(prefix="dagpg-bench-watch-"))
    sup = None
    try:
        database = server.create_database("dagster_bench_watch")
        target = server.target(database)
        home = pgharness.write_dagster_home(work / "dagster_home", target)
        password = server.admin.password or ""
        os.environ.update({"DAGSTER_HOME": str(home), "DAGSTER_PG_PASSWORD": password})
        schema.upgrade(resolve_instance(home))
        workspace = work / "workspace.yaml"
        workspace.write_text(f"load_from:\n  - python_file:\n      relative_path: {DEFINITIONS}\n"
                             "      attribute: defs\n", encoding="utf-8")
        port = free_port()
        config = work / "config" / "config.yml"
        config.parent.mkdir()
        config.write_text(f"""dagpg:
  access: {{enabled: false}}
  webserver: {{port: {port}, path_prefix: ""}}
  watch:
    service_manager: supervisord
    supervisorctl: {BIN / 'supervisorctl'}
    supervisor_config: {work / 'sv' / 'supervisord.conf'}
    log_dir: {work / 'logs'}
""", encoding="utf-8")
        env = {"DAGSTER_HOME": str(home), "DAGPG_CONFIG": str(config), "PROJECT_ENV": "dev"}
        sup = Supervisor(work / "sv", {
            "DagsterWebserver": Program(f"{BIN / 'dagster-webserver'} -w {workspace} -h "
                                        f"127.0.0.1 -p {port}", environment=env),
            "DagsterDaemon": Program(f"{BIN / 'dagster-daemon'} run -w {workspace}",
                                     environment=env),
            # Servy's StopTimeout is 30 s; a SIGSTOPped daemon waits for it before the kill.
            "DagsterKeeper": Program(f"{BIN / 'dagpg'} watch", environment=env),
        })
        for name in ("DagsterDaemon", "DagsterWebserver"):
            sup.programs[name].stopwaitsecs = 30
        sup.config.write_text(sup._render(False), encoding="utf-8")
        sup.start({"DAGSTER_PG_PASSWORD": password})
        import dagster as dg

        instance = dg.DagsterInstance.from_config(str(home))
        required = instance.get_required_daemon_types()
        processes.wait_for(lambda: all(heartbeats(target).get(t, 0) > time.time() - 60
                                       for t in required), 300, "fresh heartbeats")
        processes.wait_for(lambda: processes.http_json(f"http://127.0.0.1:{port}/server_info"),
                           300, "the webserver")
        log = work / "logs" / jsonlog.FILE_NAME

        healthy_from = time.time()
        print(f"watching the healthy deployment for {args.healthy_minutes:g} min ...",
              flush=True)
        from tests.test_watch_e2e import Stack, launch

        stack = Stack(work, home, target, port, sup, {}, work / "marker", instance)
        launch(stack, args.healthy_minutes * 60 * 0.8)  # a long run meanwhile
        time.sleep(args.healthy_minutes * 60)
        healthy_actions = len(actions(log, healthy_from))
        others = [r for r in jsonlog.read(log) if r["event"] != "startup"
                  and datetime.fromisoformat(r["ts"]).timestamp() >= healthy_from]
        passes = max((r["pass"] or 0 for r in jsonlog.read(log)), default=0)
        with pg.connection(target) as conn, conn.cursor() as cur:
            cur.execute("SELECT passes FROM dagpg.keeper")
            passes = cur.fetchone()[0]
        print(f"healthy: {healthy_actions} actions, {len(others)} log records other than "
              f"startup ({sorted({r['event'] for r in others})}) in {args.healthy_minutes:g} "
              f"min; the keeper made {passes} passes", flush=True)
        assert not others, others

        results = []
        for i in range(args.repeat):
            since = time.time()
            daemon = sup.pid("DagsterDaemon")
            os.kill(daemon, signal.SIGSTOP)
            frozen = time.time()
            restart = processes.wait_for(lambda since=since: [a for a in actions(log, since)
                                                  if a["target"] == "DagsterDaemon"], 600,
                                         "the keeper's restart")[0]
            restarted = datetime.fromisoformat(restart["ts"]).timestamp()
            processes.wait_for(lambda r=restarted: all(heartbeats(target).get(t, 0) > r
                                                        for t in required), 300,
                               "fresh heartbeats")
            fresh = time.time()
            results.append({"detect_and_restart_s": round(restarted - frozen, 1),
                            "restart_took_s": restart["data"]["elapsed_s"],
                            "fresh_heartbeat_s": round(fresh - frozen, 1)})
            print(f"freeze {i + 1}: restarted after {restarted - frozen:.0f} s (the restart "
                  f"took {restart['data']['elapsed_s']:.0f} s), fresh heartbeats after "
                  f"{fresh - frozen:.0f} s", flush=True)
            if i + 1 < args.repeat:
                time.sleep(100)  # past the restarted daemon's grace (90 s)
        fresh = [r["fresh_heartbeat_s"] for r in results]
        median = statistics.median(fresh)
        print(f"freeze -> fresh heartbeat: median {median:.0f} s (min {min(fresh):.0f}, max "
              f"{max(fresh):.0f}); {median / TARGET_S:.2f}x the {TARGET_S} s target; "
              f"{DAGSTER_TOLERANCE_S / median:.1f}x sooner than Dagster's {DAGSTER_TOLERANCE_S} s "
              "liveness tolerance")
        print(json.dumps({"healthy_minutes": args.healthy_minutes,
                          "healthy_actions": healthy_actions, "freezes": results,
                          "median_fresh_heartbeat_s": median, "target_s": TARGET_S}))
        instance.dispose()
    finally:
        if sup is not None:
            sup.kill_all()
        server.cluster.destroy()
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
