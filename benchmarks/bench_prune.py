"""Benchmark `dagpg prune` on a history of >= 1M events, against Dagster's own delete_run loop.

    flock /tmp/dagpg-bench.lock .venv/bin/python benchmarks/bench_prune.py [--runs 2000]

Builds the history in a throwaway PostgreSQL 15 (default server settings): one real run written
by Dagster (five assets logging ~95 messages each, an asset check), replicated run by run (new
run ids and event ids, timestamps spread over two years, oldest first, the way Dagster lays them
out: runs, run_tags, event_logs, asset_event_tags, asset_check_executions, compute log folders).
With the default retention (logs 30 days, runs 365 days, newest 20 runs of each job kept) about
half the runs go whole and most of the rest lose their logs. Then, `--rounds` times, interleaved,
each on a fresh copy of that database (CREATE DATABASE ... TEMPLATE):

- A: `prune_history()` (the library call behind `dagpg prune`), with a dagster-webserver on the
  same database answering a GraphQL runs query in a loop the whole time (latency p50/p99);
- B: Dagster's own `DagsterInstance.delete_run` for the same runs A deletes whole, oldest first,
  for at most --anchor-seconds (its rate is per run, so a time box measures it).

Targets: A deletes events >= 20x as fast as B; GraphQL p99 under 1 s during A.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from dagpg import pg, schema  # noqa: E402
from dagpg.backup.create import human_bytes  # noqa: E402
from dagpg.instance import PgTarget, resolve_instance  # noqa: E402
from dagpg.localdb import LocalCluster, _hand_to_server_user, free_port  # noqa: E402
from dagpg.prune import make_plan, make_policy, prune_history  # noqa: E402
from dagpg.settings import KitSettings  # noqa: E402
from tests import pgharness, processes  # noqa: E402

DEFS = Path(__file__).resolve().parent / "bench_prune_defs.py"
SPAN_DAYS = 730
QUERY = ("{ runsOrError(limit: 25) { ... on Runs { results { runId status jobName startTime "
         "endTime tags { key value } } } } }")
EVENT_COLUMNS = ("id", "run_id", "event", "dagster_event_type", "timestamp", "step_key",
                 "asset_key", "partition")


def start_cluster(root: Path) -> tuple[LocalCluster, PgTarget]:
    root.mkdir(parents=True)
    root.chmod(0o755)
    _hand_to_server_user(root)
    cluster = LocalCluster(root=root / "cluster", port=free_port(), settings={})
    cluster.up()
    password = secrets.token_urlsafe(18)
    cluster.ensure_role("postgres", password, superuser=True)
    admin = PgTarget(host="127.0.0.1", port=cluster.port, database="postgres", user="postgres",
                     password=password, password_source="env:DAGSTER_PG_PASSWORD")
    os.environ["DAGSTER_PG_PASSWORD"] = password
    return cluster, admin


def build(server: pgharness.PgServer, root: Path, runs: int) -> tuple[Path, dict]:
    """The source database `bench_src`: one real run, replicated into `runs` runs."""
    sys.path.insert(0, str(DEFS.parent))
    import bench_prune_defs as defs

    server.create_database("bench_src")
    home = pgharness.write_dagster_home(root / "bench_src", server.target("bench_src"))
    schema.upgrade(resolve_instance(home))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        real = dg.materialize(defs.ASSETS, instance=instance, tags={"team": "gis"}).run_id
    target = server.target("bench_src")
    now = datetime.now(UTC).replace(tzinfo=None)
    with pg.connection(target) as conn, conn.cursor() as cur:
        cur.execute("CREATE EXTENSION IF NOT EXISTS pgstattuple")
        cur.execute(f"SELECT {', '.join(EVENT_COLUMNS)} FROM event_logs "  # noqa: S608
                    "WHERE run_id = %s ORDER BY id", (real,))
        events = cur.fetchall()
        cur.execute("SELECT * FROM runs WHERE run_id = %s", (real,))
        run_row = cur.fetchone()
        run_cols = [d[0] for d in cur.description]
        cur.execute("SELECT key, value FROM run_tags WHERE run_id = %s", (real,))
        tags = cur.fetchall()
        cur.execute("SELECT event_id, asset_key, key, value, event_timestamp FROM "
                    "asset_event_tags WHERE event_id = ANY(%s)", ([e[0] for e in events],))
        event_tags = cur.fetchall()
        cur.execute("SELECT asset_key, check_name, partition, execution_status, "
                    "evaluation_event, evaluation_event_timestamp, evaluation_event_storage_id, "
                    "materialization_event_storage_id FROM asset_check_executions "
                    "WHERE run_id = %s", (real,))
        checks = cur.fetchall()
        cur.execute("DELETE FROM asset_check_executions WHERE run_id = %s", (real,))
        cur.execute("DELETE FROM asset_event_tags WHERE event_id = ANY(%s)",
                    ([e[0] for e in events],))
        cur.execute("DELETE FROM event_logs WHERE run_id = %s", (real,))
        cur.execute("DELETE FROM runs WHERE run_id = %s", (real,))
        cur.execute("SELECT coalesce(max(id), 0) + 1 FROM event_logs")
        next_id = cur.fetchone()[0]
    first_id = events[0][0]
    logs_src = home / "storage" / real
    started = time.monotonic()
    with pg.connection(target) as conn, conn.cursor() as cur:
        for k in range(runs):
            run_id = str(uuid.UUID(int=(1 << 120) + k))
            age = timedelta(days=SPAN_DAYS * (runs - 1 - k) / max(runs - 1, 1))
            shift = (now - age) - run_row[run_cols.index("create_timestamp")]
            values = dict(zip(run_cols, run_row, strict=True))
            values.pop("id")
            values.update(run_id=run_id, run_body=values["run_body"].replace(real, run_id),
                          create_timestamp=values["create_timestamp"] + shift,
                          update_timestamp=values["update_timestamp"] + shift,
                          start_time=(values["start_time"] or 0) + shift.total_seconds(),
                          end_time=(values["end_time"] or 0) + shift.total_seconds())
            cur.execute(f"INSERT INTO runs ({', '.join(values)}) VALUES "  # noqa: S608
                        f"({', '.join(['%s'] * len(values))})", list(values.values()))
            cur.executemany("INSERT INTO run_tags (run_id, key, value) VALUES (%s, %s, %s)",
                            [(run_id, key, value) for key, value in tags])
            offset = next_id - first_id
            buffer = io.StringIO()
            for row in events:
                out = [row[0] + offset, run_id, row[2].replace(real, run_id), row[3],
                       row[4] + shift, row[5], row[6], row[7]]
                buffer.write("\t".join(_copy_text(v) for v in out) + "\n")
            buffer.seek(0)
            cur.copy_expert(f"COPY event_logs ({', '.join(EVENT_COLUMNS)}) FROM STDIN", buffer)
            cur.executemany(
                "INSERT INTO asset_event_tags (event_id, asset_key, key, value, event_timestamp) "
                "VALUES (%s, %s, %s, %s, %s)",
                [(e + offset, a, key, v, (t + shift) if t else t)
                 for e, a, key, v, t in event_tags])
            cur.executemany(
                "INSERT INTO asset_check_executions (asset_key, check_name, partition, run_id, "
                "execution_status, evaluation_event, evaluation_event_timestamp, "
                "evaluation_event_storage_id, materialization_event_storage_id) VALUES "
                "(%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                [(a, c, p, run_id, s, (ev or "").replace(real, run_id), (t + shift) if t else t,
                  (i + offset) if i else i, (m + offset) if m else m)
                 for a, c, p, s, ev, t, i, m in checks])
            next_id += len(events)
            if logs_src.is_dir():
                shutil.copytree(logs_src, home / "storage" / run_id)
            if (k + 1) % 200 == 0:
                conn.commit()
                print(f"  built {k + 1}/{runs} runs ({time.monotonic() - started:.0f}s)",
                      file=sys.stderr)
        cur.execute("SELECT setval('event_logs_id_seq', (SELECT max(id) FROM event_logs))")
    shutil.rmtree(logs_src, ignore_errors=True)
    _latest_materializations(target)
    with pg.connection(target, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("VACUUM (ANALYZE)")
        cur.execute("CHECKPOINT")
    return home, {"runs": runs, "events_per_run": len(events), "events": runs * len(events)}


def _copy_text(value) -> str:
    if value is None:
        return "\\N"
    text = value.isoformat(sep=" ") if isinstance(value, datetime) else str(value)
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def _latest_materializations(target: PgTarget) -> None:
    """asset_keys.last_materialization as Dagster keeps it: the newest record of each asset."""
    from dagster._core.storage.event_log.base import EventLogRecord
    from dagster_shared.serdes import deserialize_value, serialize_value

    with pg.connection(target) as conn, conn.cursor() as cur:
        cur.execute("SELECT e.asset_key, e.id, e.event, e.run_id FROM event_logs e JOIN "
                    "(SELECT max(id) AS id FROM event_logs WHERE dagster_event_type = "
                    "'ASSET_MATERIALIZATION' GROUP BY asset_key) m ON m.id = e.id")
        for asset_key, event_id, event, run_id in cur.fetchall():
            record = EventLogRecord(storage_id=event_id,
                                    event_log_entry=deserialize_value(event))
            cur.execute("UPDATE asset_keys SET last_materialization = %s, last_run_id = %s "
                        "WHERE asset_key = %s", (serialize_value(record), run_id, asset_key))


def copy_home(server, source: Path, root: Path, name: str) -> Path:
    """A fresh copy of the source database and its compute logs."""
    server.drop_database(name)
    with pg.connection(server.admin, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}" TEMPLATE bench_src STRATEGY FILE_COPY')
    home = root / name
    shutil.rmtree(home, ignore_errors=True)
    pgharness.write_dagster_home(home, server.target(name))
    shutil.copytree(source / "storage", home / "storage")
    return home


def run_ours(home: Path, probe: Probe | None) -> dict:
    marks: dict[str, float] = {}
    started = time.monotonic()

    def progress(message: str) -> None:
        if message.startswith("VACUUM"):
            marks["vacuum"] = time.monotonic() - started

    if probe:
        probe.start()
    report = prune_history(resolve_instance(home), KitSettings(), force=True, progress=progress)
    if probe:
        probe.stop()
    deleting = marks.get("vacuum", report.duration_s)
    target = resolve_instance(home).target
    with pg.connection(target) as conn, conn.cursor() as cur:
        cur.execute("SELECT approx_free_space FROM pgstattuple_approx('event_logs')")
        free_after = cur.fetchone()[0]
    again = time.monotonic()
    prune_history(resolve_instance(home), KitSettings(), force=True)
    return {"events": report.events_total, "runs_deleted": report.runs_deleted,
            "runs_logs_pruned": report.runs_logs_pruned, "deleting_s": deleting,
            "total_s": report.duration_s, "events_per_s": report.events_total / deleting,
            "sizes_before": sum(report.sizes_before.values()),
            "sizes_after": sum(report.sizes_after.values()),
            "estimated_bytes": report.estimated_bytes, "event_logs_free_after": free_after,
            "transactions": report.transactions, "nothing_to_do_s": time.monotonic() - again}


def run_anchor(home: Path, seconds: float) -> dict:
    target = resolve_instance(home).target
    with pg.connection(target) as conn, conn.cursor() as cur:
        plan = make_plan(conn, make_policy(KitSettings()))
        cur.execute("SELECT run_id, count(*) FROM event_logs WHERE run_id = ANY(%s) GROUP BY 1",
                    (plan.delete_runs,))
        counts = dict(cur.fetchall())
    deleted = events = 0
    with dg.DagsterInstance.from_config(str(home)) as instance:
        started = time.monotonic()
        for run_id in plan.delete_runs:
            instance.delete_run(run_id)
            deleted += 1
            events += counts.get(run_id, 0)
            if time.monotonic() - started > seconds:
                break
        took = time.monotonic() - started
    return {"runs": deleted, "of_runs": len(plan.delete_runs), "events": events, "s": took,
            "events_per_s": events / took}


class Probe:
    """A GraphQL runs query against the webserver, in a loop, while something runs."""

    def __init__(self, url: str):
        self.url = url
        self.latencies: list[float] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def query_once(self) -> float:
        body = json.dumps({"query": QUERY}).encode()
        request = urllib.request.Request(self.url, data=body,
                                         headers={"Content-Type": "application/json"})
        started = time.monotonic()
        with urllib.request.urlopen(request, timeout=30) as response:
            data = json.loads(response.read())
        took = time.monotonic() - started
        if "errors" in data or not data["data"]["runsOrError"].get("results"):
            raise RuntimeError(str(data)[:300])
        return took

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.latencies.append(self.query_once())
            except Exception:  # noqa: BLE001  (counted: a failing query is a finding)
                self.errors += 1
            time.sleep(0.05)

    def start(self) -> None:
        self.latencies, self.errors = [], 0
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stop(self) -> dict:
        self._stop.set()
        if self._thread:
            self._thread.join(60)
        return self.summary()

    def summary(self) -> dict:
        values = sorted(self.latencies)
        if not values:
            return {"queries": 0, "errors": self.errors}
        return {"queries": len(values), "errors": self.errors,
                "p50_s": statistics.median(values),
                "p99_s": values[min(len(values) - 1, int(0.99 * len(values)))],
                "max_s": values[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--anchor-seconds", type=float, default=90.0)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="dagpg-bench-prune-"))
    root.chmod(0o755)
    cluster, admin = start_cluster(root / "pg")
    server = pgharness.PgServer(admin=admin, cluster=cluster)
    webserver = None
    try:
        t0 = time.monotonic()
        source, shape = build(server, root, args.runs)
        print(f"history: {shape['runs']} runs x {shape['events_per_run']} events = "
              f"{shape['events']:,} events, built in {time.monotonic() - t0:.0f}s")
        workspace = root / "workspace.yaml"
        workspace.write_text(f"load_from:\n  - python_file:\n      relative_path: {DEFS}\n"
                             "      attribute: defs\n", encoding="utf-8")
        ours, anchor, latency = [], [], []
        port = free_port()
        for n in range(args.rounds):
            home_a = copy_home(server, source, root, "bench_a")
            if webserver is None:
                webserver = processes.start_webserver(home_a, port, root / "logs",
                                                       workspace=workspace)
            probe = Probe(f"http://127.0.0.1:{port}/graphql")
            processes.wait_for(lambda probe=probe: _answers(probe), timeout=180,
                               what="the webserver", proc=webserver)
            probe.start()
            time.sleep(5)
            idle = probe.stop()
            a = run_ours(home_a, probe)
            during = probe.summary()
            ours.append(a)
            latency.append({"idle": idle, "during": during})
            print(f"round {n + 1} A (dagpg prune): {a['events']:,} events in {a['deleting_s']:.1f}s "
                  f"deleting ({a['events_per_s']:,.0f}/s), {a['total_s']:.1f}s with VACUUM; "
                  f"{a['runs_deleted']} runs deleted, {a['runs_logs_pruned']} logs pruned; "
                  f"GraphQL during: p50 {during.get('p50_s', 0):.3f}s "
                  f"p99 {during.get('p99_s', 0):.3f}s max {during.get('max_s', 0):.3f}s "
                  f"({during['queries']} queries, {during['errors']} errors); idle p50 "
                  f"{idle.get('p50_s', 0):.3f}s p99 {idle.get('p99_s', 0):.3f}s", flush=True)
            home_b = copy_home(server, source, root, "bench_b")
            b = run_anchor(home_b, args.anchor_seconds)
            anchor.append(b)
            server.drop_database("bench_b")
            print(f"round {n + 1} B (delete_run loop): {b['runs']}/{b['of_runs']} runs, "
                  f"{b['events']:,} events in {b['s']:.1f}s ({b['events_per_s']:,.0f}/s)",
                  flush=True)
        a_rate = statistics.median(r["events_per_s"] for r in ours)
        b_rate = statistics.median(r["events_per_s"] for r in anchor)
        p99 = statistics.median(r["during"]["p99_s"] for r in latency)
        last = ours[-1]
        print(f"\nmedian of {args.rounds}: dagpg prune {a_rate:,.0f} events/s deleting "
              f"(with VACUUM: {statistics.median(r['events'] / r['total_s'] for r in ours):,.0f}"
              f"/s), Dagster delete_run {b_rate:,.0f} events/s: {a_rate / b_rate:.1f}x "
              "(target >= 20x)")
        print(f"GraphQL runs query during the prune: p99 {p99:.3f}s (target < 1 s), p50 "
              f"{statistics.median(r['during']['p50_s'] for r in latency):.3f}s")
        print(f"tables the prune touches: {human_bytes(last['sizes_before'])} -> "
              f"{human_bytes(last['sizes_after'])} on disk; the deleted rows took "
              f"{human_bytes(last['estimated_bytes'])} (estimated); event_logs free space for reuse "
              f"after VACUUM {human_bytes(last['event_logs_free_after'])}")
        print(f"a second prune with nothing left to do: "
              f"{statistics.median(r['nothing_to_do_s'] for r in ours):.1f}s")
        print(json.dumps({"shape": shape, "ours": ours, "anchor": anchor, "latency": latency},
                         default=str))
    finally:
        if webserver is not None:
            processes.stop(webserver)
        cluster.destroy()
        shutil.rmtree(root, ignore_errors=True)


def _answers(probe: Probe) -> bool:
    try:
        probe.query_once()
        return True
    except Exception:  # noqa: BLE001
        return False


if __name__ == "__main__":
    main()
