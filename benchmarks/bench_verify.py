"""Time `dagpg verify` against running, healthy, local services (target: under 2 s).

    flock /tmp/dagpg-bench.lock .venv/bin/python benchmarks/bench_verify.py [--repeat 10]

Starts a throwaway PostgreSQL, an instance at schema head with a fresh backup, a
dagster-webserver (root) and one under --path-prefix /dagster (standing in for the public URL),
and a dagster-daemon, all on tests/verify_definitions.py (the schedules verify expects). Then
runs the `dagpg` console script as a user would, `--repeat` times each: plain, and with
`--public-url`. Prints wall-clock times (median, min, max) and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from dagpg import schema  # noqa: E402
from dagpg.instance import resolve_instance  # noqa: E402
from dagpg.localdb import free_port  # noqa: E402
from tests import pgharness, processes  # noqa: E402

DAGPG = Path(sys.executable).parent / "dagpg"
DEFINITIONS = PROJECT / "tests" / "verify_definitions.py"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()

    server, root = pgharness.start_throwaway()
    work = Path(tempfile.mkdtemp(prefix="dagpg-bench-verify-"))
    procs = []
    try:
        database = server.create_database("dagster_bench_verify")
        home = pgharness.write_dagster_home(work / "dagster_home", server.target(database))
        workspace = work / "workspace.yaml"
        workspace.write_text(f"load_from:\n  - python_file:\n      relative_path: {DEFINITIONS}\n"
                             "      attribute: defs\n", encoding="utf-8")
        port, public_port = free_port(), free_port()
        (work / "config").mkdir()
        (work / "config" / "config.yml").write_text(
            f"dagpg:\n  access:\n    enabled: false\n  webserver:\n    port: {port}\n"
            "    path_prefix: \"\"\n", encoding="utf-8")
        env = {**os.environ, "DAGSTER_HOME": str(home),
               "DAGSTER_PG_PASSWORD": server.admin.password or ""}
        env.pop("DAGPG_CONFIG", None)
        os.environ.update(env)
        schema.upgrade(resolve_instance(home))

        logs = work / "logs"
        procs.append(processes.start_webserver(home, port, logs, workspace=workspace))
        procs.append(processes.start_webserver(home, public_port, logs, path_prefix="/dagster",
                                               workspace=workspace))
        procs.append(processes.start_daemon(home, logs, workspace=workspace))
        for p, url in ((procs[0], f"http://127.0.0.1:{port}"),
                       (procs[1], f"http://127.0.0.1:{public_port}/dagster")):
            processes.wait_for(lambda u=url: processes.http_json(f"{u}/server_info"),
                               timeout=180, what=url, proc=p)
        subprocess.run([str(DAGPG), "backup", "--dest", str(work / "backups"), "--silent"],
                       env=env, check=True, stdout=subprocess.DEVNULL)
        processes.wait_for(lambda: _run(env, [])[1] == 0, timeout=180,
                           what="a passing `dagpg verify`", interval=2)

        public = ["--public-url", f"http://127.0.0.1:{public_port}/dagster"]
        results = {}
        for name, extra in (("dagpg verify", []), ("dagpg verify --public-url", public)):
            times = []
            for _ in range(args.repeat):
                elapsed, code = _run(env, extra)
                assert code == 0, f"{name} exited {code}"
                times.append(elapsed)
            results[name] = times
        load = os.getloadavg()
        print(f"{'command':<28} {'median':>7} {'min':>6} {'max':>6}  (s, n={args.repeat}, "
              f"load {load[0]:.2f}, {os.cpu_count()} cores)")
        for name, times in results.items():
            print(f"{name:<28} {statistics.median(times):7.2f} {min(times):6.2f} "
                  f"{max(times):6.2f}")
        print(json.dumps({name: {"median_s": round(statistics.median(t), 3),
                                 "min_s": round(min(t), 3), "max_s": round(max(t), 3)}
                          for name, t in results.items()} | {"loadavg_1m": load[0]}))
    finally:
        for p in reversed(procs):
            processes.stop(p)
        server.cluster.destroy()
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def _run(env: dict[str, str], extra: list[str]) -> tuple[float, int]:
    started = time.perf_counter()
    proc = subprocess.run([str(DAGPG), "verify", "--json", *extra], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started, proc.returncode


if __name__ == "__main__":
    main()
