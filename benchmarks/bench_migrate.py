"""Benchmark `dagpg migrate-from-sqlite` on a synthetic SQLite history of >= 1M events.

    flock /tmp/dagpg-bench.lock .venv/bin/python benchmarks/bench_migrate.py [--runs 2000]

Builds a SQLite instance with real Dagster: one real run (five assets, each logging ~100
messages) is materialized, then replicated run by run (new run ids, shifted timestamps) into
new shards, index.db mirror rows, runs and run_tags, the way Dagster itself lays them out.
Starts a throwaway PostgreSQL (default server settings) and measures, in one go:

- the migration (the CLI in a child process, with its own verification), twice; peak RSS of
  the CLI (getrusage) and of its process tree (/proc, sampled);
- a plain COPY of the same event_logs rows into the same, empty table (a fresh Dagster schema),
  repeated (median), since the machine may be shared;
- the API replay (add_run + store_event, what `dagster debug import` does) of a sample of runs;
- the integrity check (PRAGMA quick_check of every file) against the event plan, in turns.

Targets: migration events/s >= 0.8x plain COPY, >= 100x API replay, peak RSS <= 512 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import dagster as dg

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from dagpg import pg, schema  # noqa: E402
from dagpg.instance import PgTarget, resolve_instance  # noqa: E402
from dagpg.localdb import LocalCluster, _hand_to_server_user, free_port  # noqa: E402
from tests import pgharness  # noqa: E402

DAGPG = Path(sys.executable).parent / "dagpg"
MESSAGES_PER_ASSET = 95
RUN_EVERY_S = 60.0  # synthetic runs follow each other a minute apart


def _asset(name: str, deps: list[str]):
    @dg.asset(name=name, deps=deps)
    def _compute(context) -> dg.MaterializeResult:
        for i in range(MESSAGES_PER_ASSET):
            context.log.info(f"{name}: processed tile {i} of {MESSAGES_PER_ASSET} (parcels, parks)")
        return dg.MaterializeResult(metadata={"rows": 1000, "tiles": MESSAGES_PER_ASSET})
    return _compute


ASSETS = [_asset("bench_inputs", []), _asset("bench_parks", ["bench_inputs"]),
          _asset("bench_parcels", ["bench_inputs"]),
          _asset("bench_near", ["bench_parks", "bench_parcels"]),
          _asset("bench_summary", ["bench_near"])]


def build_source(home: Path, runs: int) -> dict:
    """A SQLite DAGSTER_HOME whose history holds `runs` copies of one real run."""
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text(f"storage:\n  sqlite:\n    base_dir: {home / 'storage'}\n"
                                       "telemetry:\n  enabled: false\n", encoding="utf-8")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        result = dg.materialize(ASSETS, instance=instance, tags={"team": "gis"})
        real = result.run_id
    base = home / "storage" / "history"
    shards = base / "runs"
    template = _rows(shards / f"{real}.db", "SELECT id, run_id, event, dagster_event_type, "
                     "timestamp, step_key, asset_key, partition FROM event_logs ORDER BY id")
    mirrored = {(r[0], r[1]) for r in _rows(shards / "index.db", "SELECT dagster_event_type, "
                                             "timestamp FROM event_logs WHERE run_id = ?", real)}
    run_row = _rows(base / "runs.db", "SELECT * FROM runs WHERE run_id = ?", real)[0]
    run_cols = [c[1] for c in _rows(base / "runs.db", "PRAGMA table_info(runs)")]
    tags = _rows(base / "runs.db", "SELECT key, value FROM run_tags WHERE run_id = ?", real)
    empty = _empty_shard(shards, real)
    parsed = [(json.loads(r[2]), r) for r in template]
    runs_db = sqlite3.connect(base / "runs.db")
    index = sqlite3.connect(shards / "index.db")
    t0 = time.monotonic()
    for k in range(1, runs):
        run_id = str(uuid.UUID(int=k + (1 << 100)))
        shift = k * RUN_EVERY_S
        shard = shards / f"{run_id}.db"
        shutil.copyfile(empty, shard)
        rows, mirror = [], []
        for n, (event, r) in enumerate(parsed, 1):
            event = dict(event, run_id=run_id, timestamp=event["timestamp"] + shift)
            if isinstance(event.get("dagster_event"), dict):
                event["dagster_event"] = dict(event["dagster_event"], run_id=run_id)
            ts = _shift(r[4], shift)
            row = (n, run_id, json.dumps(event), r[3], ts, r[5], r[6], r[7])
            rows.append(row)
            if (r[3], r[4]) in mirrored:
                mirror.append(row[1:])
        conn = sqlite3.connect(shard)
        conn.executemany("INSERT INTO event_logs (id, run_id, event, dagster_event_type, "
                         "timestamp, step_key, asset_key, partition) VALUES (?,?,?,?,?,?,?,?)",
                         rows)
        conn.commit()
        conn.close()
        index.executemany("INSERT INTO event_logs (run_id, event, dagster_event_type, timestamp, "
                          "step_key, asset_key, partition) VALUES (?,?,?,?,?,?,?)", mirror)
        values = dict(zip(run_cols, run_row, strict=True))
        values.update(id=None, run_id=run_id, run_body=values["run_body"].replace(real, run_id),
                      create_timestamp=_shift(values["create_timestamp"], shift),
                      update_timestamp=_shift(values["update_timestamp"], shift),
                      start_time=(values["start_time"] or 0) + shift,
                      end_time=(values["end_time"] or 0) + shift)
        runs_db.execute(f"INSERT INTO runs ({', '.join(run_cols)}) VALUES "  # noqa: S608
                        f"({', '.join('?' * len(run_cols))})", list(values.values()))
        runs_db.executemany("INSERT INTO run_tags (run_id, key, value) VALUES (?, ?, ?)",
                            [(run_id, k_, v) for k_, v in tags])
        if k % 200 == 0:
            index.commit()
            runs_db.commit()
            print(f"  built {k}/{runs} runs ({time.monotonic() - t0:.0f}s)", file=sys.stderr)
    index.commit()
    runs_db.commit()
    _latest_materializations(index)
    index.close()
    runs_db.close()
    events = len(template) * runs
    return {"runs": runs, "events": events, "events_per_run": len(template)}


def _latest_materializations(index: sqlite3.Connection) -> None:
    """asset_keys.last_materialization as Dagster keeps it: the newest record of each asset."""
    from dagster._core.storage.event_log.base import EventLogRecord
    from dagster_shared.serdes import deserialize_value, serialize_value

    for (asset_key,) in index.execute("SELECT asset_key FROM asset_keys").fetchall():
        row = index.execute("SELECT id, event, run_id FROM event_logs WHERE asset_key = ? AND "
                            "dagster_event_type = 'ASSET_MATERIALIZATION' ORDER BY id DESC "
                            "LIMIT 1", (asset_key,)).fetchone()
        if row:
            record = EventLogRecord(storage_id=row[0], event_log_entry=deserialize_value(row[1]))
            index.execute("UPDATE asset_keys SET last_materialization = ?, last_run_id = ? "
                          "WHERE asset_key = ?", (serialize_value(record), row[2], asset_key))
    index.commit()


def _empty_shard(shards: Path, real: str) -> Path:
    path = shards.parent.parent / "empty-shard.db"
    shutil.copyfile(shards / f"{real}.db", path)
    conn = sqlite3.connect(path)
    conn.execute("DELETE FROM event_logs")
    conn.commit()
    conn.execute("VACUUM")
    conn.close()
    return path


def _shift(timestamp: str | None, seconds: float) -> str | None:
    if timestamp is None:
        return None
    from datetime import datetime, timedelta

    return str(datetime.fromisoformat(timestamp) + timedelta(seconds=seconds))


def _rows(path: Path, query: str, *params) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(query, params).fetchall()
    finally:
        conn.close()


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


def new_home(server: pgharness.PgServer, root: Path, name: str, upgrade: bool) -> Path:
    server.create_database(name)
    home = pgharness.write_dagster_home(root / name, server.target(name))
    if upgrade:
        schema.upgrade(resolve_instance(home))
    return home


def _tree_rss(root_pid: int) -> int:
    """Resident bytes of a process and all its descendants, from /proc."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            parents[int(entry)] = int(fields[1])
            rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    tree, todo = set(), [root_pid]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo.extend(p for p, parent in parents.items() if parent == pid and p not in tree)
    return sum(rss.get(p, 0) for p in tree)


def run_migration(source: Path, home: Path) -> tuple[dict, float, int, int]:
    """The CLI in a child; (report, seconds, its own peak RSS, peak RSS of its process tree)."""
    start = time.monotonic()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([str(DAGPG), "migrate-from-sqlite", str(source),
                                 "--dagster-home", str(home), "--yes", "--force", "--json"],
                                stdout=out, stderr=err)
        tree_peak = 0
        while proc.poll() is None:
            tree_peak = max(tree_peak, _tree_rss(proc.pid))
            time.sleep(0.2)
        elapsed = time.monotonic() - start
        own_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        out.seek(0)
        err.seek(0)
        output = out.read().decode()
        if proc.returncode != 0:
            raise SystemExit(f"migration failed ({proc.returncode}):\n"
                             f"{err.read().decode()[-3000:]}\n{output[-3000:]}")
    return json.loads(output), elapsed, own_peak, tree_peak


def plain_copy(source_target: PgTarget, empty_target: PgTarget, scratch: Path) -> tuple[int, float]:
    """COPY the migrated event_logs rows, as they are, into the same empty Dagster table."""
    dump = scratch / "event_logs.copy"
    with pg.connection(source_target) as conn, conn.cursor() as cur, dump.open("w") as out:
        cur.copy_expert("COPY event_logs TO STDOUT", out)
    with pg.connection(empty_target) as conn, conn.cursor() as cur, dump.open() as data:
        start = time.monotonic()
        cur.copy_expert("COPY event_logs FROM STDIN", data, size=1 << 20)
        conn.commit()
        elapsed = time.monotonic() - start
        cur.execute("SELECT count(*) FROM event_logs")
        rows = cur.fetchone()[0]
    dump.unlink()
    return rows, elapsed


def api_replay(source_home: Path, target_home: Path, sample_runs: int) -> tuple[int, float]:
    """What `dagster debug import` does: add_run, then store_event for each event."""
    from dagpg.schema import open_dagster_instance

    with dg.DagsterInstance.from_config(str(source_home)) as src, \
            open_dagster_instance(resolve_instance(target_home)) as dst:
        records = src.get_run_records(limit=sample_runs)
        payload = [(r.dagster_run, src.all_logs(r.dagster_run.run_id)) for r in records]
        events = 0
        start = time.monotonic()
        for run, logs in payload:  # as dagster/_cli/debug.py's import_command
            if not dst.has_snapshot(run.execution_plan_snapshot_id):
                dst.add_snapshot(src.get_execution_plan_snapshot(run.execution_plan_snapshot_id))
            if not dst.has_snapshot(run.job_snapshot_id):
                dst.add_snapshot(src.get_job_snapshot(run.job_snapshot_id))
            if not dst.has_run(run.run_id):
                dst.add_run(run)
                for entry in logs:
                    dst.store_event(entry)
                    events += 1
        return events, time.monotonic() - start


def check_vs_plan(source_home: Path, repeat: int) -> tuple[list[float], list[float]]:
    """The integrity check (every page of every file) and the event plan (what the migration
    read of every file before), timed in turns on the same files: (check runs, plan runs)."""
    from dagpg.migrate.idmap import EventPlan
    from dagpg.migrate.source import SourceFiles, check_integrity, discover

    layout = discover(source_home)
    shard_ids = layout.shard_ids()
    paths = [layout.runs_db, layout.index_db, layout.schedules_db,
             *(layout.shard_path(r) for r in shard_ids)]
    checks, plans = [], []
    with tempfile.TemporaryDirectory() as scratch:
        files = SourceFiles(layout, Path(scratch))
        for i in range(repeat):
            start = time.monotonic()
            check_integrity(files, paths)
            checks.append(time.monotonic() - start)
            plan = EventPlan(Path(scratch) / f"plan-{i}.db")
            start = time.monotonic()
            plan.build(files, shard_ids)
            plans.append(time.monotonic() - start)
            plan.close()
    return checks, plans


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000, help="runs of ~510 events each")
    parser.add_argument("--sample-runs", type=int, default=6, help="runs replayed via the API")
    parser.add_argument("--repeat", type=int, default=3, help="plain COPYs (median is used)")
    parser.add_argument("--migrations", type=int, default=2, help="migrations (median is used)")
    parser.add_argument("--check-repeat", type=int, default=5,
                        help="integrity checks and event plans, in turns (medians are used)")
    parser.add_argument("--keep", action="store_true", help="Keep the temporary folder.")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="dagpg-bench-migrate-"))
    root.chmod(0o755)  # the server's OS user must reach its cluster folder inside
    cluster = None
    try:
        print(f"building the SQLite history in {root} ...", file=sys.stderr)
        t = time.monotonic()
        built = build_source(root / "sqlite_home", args.runs)
        print(f"  {built['events']:,} events in {built['runs']:,} runs "
              f"({time.monotonic() - t:.0f}s)", file=sys.stderr)
        print("integrity check and event plan, in turns ...", file=sys.stderr)
        checks, plans = check_vs_plan(root / "sqlite_home", args.check_repeat)
        cluster, admin = start_cluster(root / "pg")
        server = pgharness.PgServer(admin=admin)
        # Interleaved, so that neither side alone meets a cold server (first WAL segments) or
        # a busy moment of the (shared) machine: migration, COPY, migration, COPY, COPY, ...
        runs, copies = [], []
        for i in range(max(args.migrations, args.repeat)):
            if i < args.migrations:
                print(f"migrating ({i + 1}/{args.migrations}) ...", file=sys.stderr)
                home = new_home(server, root, f"migrated_{i}", upgrade=False)
                runs.append(run_migration(root / "sqlite_home", home))
                if i:
                    server.drop_database(f"migrated_{i - 1}")
                source_db = f"migrated_{i}"
            if i < args.repeat:
                print(f"plain COPY of the same rows ({i + 1}/{args.repeat}) ...", file=sys.stderr)
                new_home(server, root, f"plain_copy_{i}", upgrade=True)
                copies.append(plain_copy(server.target(source_db),
                                         server.target(f"plain_copy_{i}"), root))
                server.drop_database(f"plain_copy_{i}")
        report = runs[-1][0]
        events = report["plan"]["events"]["total"]
        timings = report["timings_s"]
        copy_phase = statistics.median(r[0]["timings_s"]["events"] for r in runs)
        no_verify = statistics.median(sum(v for k, v in r[0]["timings_s"].items() if k != "verify")
                                      for r in runs)
        elapsed = statistics.median(r[1] for r in runs)
        rss = max(r[2] for r in runs)
        tree_rss = max(r[3] for r in runs)
        rows = copies[0][0]
        copy_elapsed = statistics.median(c[1] for c in copies)
        print("API replay of a sample ...", file=sys.stderr)
        replay_home = new_home(server, root, "replay", upgrade=True)
        replayed, replay_elapsed = api_replay(root / "sqlite_home", replay_home,
                                              args.sample_runs)

        rate_copy_phase = events / copy_phase
        rate_no_verify = events / no_verify
        rate_total = events / elapsed
        rate_plain = rows / copy_elapsed
        rate_replay = replayed / replay_elapsed
        results = {
            "events": events, "runs": built["runs"],
            "verified": all(r[0]["ok"] for r in runs),
            "migration_s": round(elapsed, 1),
            "migrations_timings_s": [r[0]["timings_s"] for r in runs],
            "migration_events_per_s": {"event copy phase": round(rate_copy_phase),
                                       "whole migration without verify": round(rate_no_verify),
                                       "whole command incl. verify": round(rate_total)},
            "plain_copy_events_per_s": round(rate_plain),
            "plain_copy_runs_s": [round(c[1], 2) for c in copies],
            "api_replay_events_per_s": round(rate_replay, 1), "api_replay_sample": replayed,
            "vs_plain_copy": {"event copy phase": round(rate_copy_phase / rate_plain, 2),
                              "without verify": round(rate_no_verify / rate_plain, 2)},
            "vs_api_replay": {"event copy phase": round(rate_copy_phase / rate_replay),
                              "whole command incl. verify": round(rate_total / rate_replay)},
            "integrity_check_s": round(statistics.median(
                r[0]["timings_s"].get("check", 0) for r in runs), 2),
            "integrity_check_alone_s": [round(c, 2) for c in checks],
            "event_plan_alone_s": [round(p, 2) for p in plans],
            "peak_rss_mb": round(rss / 2**20),
            "peak_rss_with_render_process_mb": round(tree_rss / 2**20),
            "load_average": os.getloadavg(),
        }
        print(f"\nmigrate-from-sqlite: {events:,} events, {built['runs']:,} runs, verified="
              f"{results['verified']}, median {elapsed:.1f}s in all; phases of each run:")
        for r in runs:
            print(f"    {r[0]['timings_s']}")
        print(f"  event copy phase       {rate_copy_phase:>10,.0f} events/s  "
              f"{rate_copy_phase / rate_plain:.2f}x plain COPY (target >= 0.8x)")
        print(f"  migration w/o verify   {rate_no_verify:>10,.0f} events/s  "
              f"{rate_no_verify / rate_plain:.2f}x plain COPY")
        print(f"  whole command          {rate_total:>10,.0f} events/s  "
              f"{rate_total / rate_replay:,.0f}x API replay (target >= 100x)")
        print(f"  plain COPY             {rate_plain:>10,.0f} events/s  (median of "
              f"{', '.join(f'{c[1]:.1f}s' for c in copies)})")
        print(f"  verification           {events / timings['verify']:>10,.0f} events/s "
              "(both instances, through Dagster's APIs)")
        check = statistics.median(r[0]["timings_s"].get("check", 0) for r in runs)
        print(f"  integrity check        {check:>10.2f} s  (every page of every file, before "
              f"writing): {check / elapsed:.1%} of the whole command, "
              f"{check / no_verify:.1%} of the migration without verify")
        print(f"  integrity check alone  {statistics.median(checks):>10.2f} s  vs the event plan "
              f"{statistics.median(plans):.2f} s (medians of {len(checks)}, in turns: "
              f"{statistics.median(checks) / statistics.median(plans):.2f}x; check runs "
              f"{', '.join(f'{c:.2f}' for c in checks)})")
        print(f"  API replay ({replayed} ev) {rate_replay:>10,.1f} events/s")
        print(f"  peak RSS               {rss / 2**20:>10,.0f} MB (target <= 512 MB); with the "
              f"event-rendering child: {tree_rss / 2**20:,.0f} MB (sampled every 0.2 s)")
        print(f"  load average (1, 5, 15 min) at the end: {os.getloadavg()}")
        print(json.dumps(results))
    finally:
        if cluster is not None:
            cluster.destroy()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
