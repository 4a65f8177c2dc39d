"""Benchmark `dagpg backup` against a bare `pg_dump -Fc`, and `dagpg backups verify
--restore-test` against a bare `pg_restore`, on an instance with >= 1M event rows.

    flock /tmp/dagpg-bench.lock .venv/bin/python benchmarks/bench_backup.py [--events 1000000]

Starts a throwaway PostgreSQL (default server settings) in a temporary folder, creates a Dagster
instance in it (schemas at head), materializes two real runs (so compute logs and real event
bodies exist), then bulk-inserts synthetic event_logs rows by replicating those real events with
SQL (each row with its own run id in its body), plus one runs row per 100 events. Each measurement is repeated (--repeat, alternating the
two sides) and the medians are compared. Prints a table and a JSON line. Targets: backup
overhead <= 10%, restore test <= 1.5x bare pg_restore. Also measured: the library call
`create_backup()` (what the Dagster job runs, without the CLI's start) and `dagpg --version`
(the CLI's start alone).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg
from psycopg2 import sql

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from dagpg import pg, schema  # noqa: E402
from dagpg.instance import PgTarget, resolve_instance  # noqa: E402
from dagpg.localdb import LocalCluster, free_port  # noqa: E402
from dagpg.pgbin import find_program  # noqa: E402

DAGPG = Path(sys.executable).parent / "dagpg"
DATABASE = "dagster_bench"


@dg.asset
def bench_source(context) -> int:
    print("some stdout for the compute logs")
    context.log.info("bench_source ran")
    return 1


@dg.asset
def bench_derived(bench_source: int) -> int:
    return bench_source + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="Keep the temporary folder.")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="dagpg-bench-"))
    work.chmod(0o755)
    cluster = LocalCluster(root=work / "cluster", port=free_port())
    try:
        run(cluster, work, args)
    finally:
        cluster.destroy()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def run(cluster: LocalCluster, work: Path, args) -> None:
    status = cluster.up()
    password = secrets.token_urlsafe(18)
    cluster.ensure_role("postgres", password, superuser=True)
    os.environ["DAGSTER_PG_PASSWORD"] = password
    admin = PgTarget(host="127.0.0.1", port=cluster.port, database="postgres", user="postgres",
                     password=password, password_source="env:DAGSTER_PG_PASSWORD")
    with pg.connection(admin, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
    home = work / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(f"""storage:
  postgres:
    postgres_db:
      username: postgres
      password: {{env: DAGSTER_PG_PASSWORD}}
      hostname: 127.0.0.1
      db_name: {DATABASE}
      port: {cluster.port}
      scheme: postgresql+psycopg2
telemetry:
  enabled: false
""")
    os.environ["DAGSTER_HOME"] = str(home)
    instance = resolve_instance(home)
    schema.upgrade(instance)
    dagster = dg.DagsterInstance.from_config(str(home))
    try:
        for _ in range(2):
            assert dg.materialize([bench_source, bench_derived], instance=dagster).success
    finally:
        dagster.dispose()
    target = instance.target
    seconds = fill(target, args.events)
    with pg.connection(target) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*), pg_size_pretty(pg_total_relation_size('event_logs')) "
                    "FROM event_logs")
        events, events_size = cur.fetchone()
        cur.execute("SELECT pg_size_pretty(pg_database_size(current_database()))")
        db_size = cur.fetchone()[0]
    print(f"PostgreSQL {status.version} on 127.0.0.1:{cluster.port}; {events} event rows "
          f"(event_logs {events_size}, database {db_size}), generated in {seconds:.1f}s",
          flush=True)

    env = {**os.environ, **target.libpq_env()}
    pg_dump = find_program("pg_dump")
    pg_restore = find_program("pg_restore")
    dests = work / "backups"
    bare_dump = work / "bare.dump"
    times: dict[str, list[float]] = {"pg_dump": [], "dagpg backup": [], "create_backup()": [],
                                     "dagpg --version": [], "pg_restore": [],
                                     "restore-test": []}
    names = []
    for i in range(args.repeat):
        order = [("pg_dump", lambda: timed([str(pg_dump.path), "-Fc", "-f", str(bare_dump)],
                                           env)),
                 ("dagpg backup", lambda: timed([str(DAGPG), "backup", "--dest", str(dests),
                                                 "--silent", "--json"], env)),
                 ("create_backup()", lambda: library_backup(instance, dests))]
        for label, fn in order if i % 2 == 0 else reversed(order):
            elapsed, out = fn()
            times[label].append(elapsed)
            if label == "dagpg backup":
                names.append(json.loads(out)["name"])
            print(f"  {label:<16} {elapsed:7.2f}s", flush=True)
        bare_dump.unlink()
        times["dagpg --version"].append(timed([str(DAGPG), "--version"], env)[0])
    name = names[-1]
    dump = dests / name / "dagster.dump"
    for i in range(args.repeat):
        def bare(scratch=f"bench_restore_{i}"):
            with pg.connection(admin, autocommit=True) as conn, conn.cursor() as cur:
                cur.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(
                    sql.Identifier(scratch)))
            try:
                return timed([str(pg_restore.path), "-d", scratch, str(dump)], env)
            finally:
                with pg.connection(admin, autocommit=True) as conn, conn.cursor() as cur:
                    cur.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(scratch)))

        order = [("pg_restore", bare),
                 ("restore-test", lambda: timed([str(DAGPG), "backups", "verify", name, "--dir",
                                                 str(dests), "--restore-test", "--silent"],
                                                env))]
        for label, fn in order if i % 2 == 0 else reversed(order):
            elapsed, _ = fn()
            times[label].append(elapsed)
            print(f"  {label:<16} {elapsed:7.2f}s", flush=True)

    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    dump_size = dump.stat().st_size
    overhead = med["dagpg backup"] / med["pg_dump"] - 1
    library = med["create_backup()"] / med["pg_dump"] - 1
    ratio = med["restore-test"] / med["pg_restore"]
    print()
    print(f"{'measure':<20}{'median':>9}{'best':>9}   runs")
    for label, values in times.items():
        print(f"{label:<20}{med[label]:>8.2f}s{best[label]:>8.2f}s   "
              + ", ".join(f"{v:.2f}" for v in values))
    print(f"dump size: {dump_size / 2**20:.1f} MiB")
    print(f"dagpg backup vs pg_dump -Fc: {overhead:+.1%} (target <= +10%) "
          f"{'OK' if overhead <= 0.10 else 'MISSED'}")
    print(f"  of which the CLI's start (dagpg --version) {med['dagpg --version']:.2f}s; the "
          f"library call alone (as the Dagster job makes it): {library:+.1%}")
    print(f"--restore-test vs pg_restore: {ratio:.2f}x (target <= 1.5x) "
          f"{'OK' if ratio <= 1.5 else 'MISSED'}")
    print(f"best of {args.repeat}: backup {best['dagpg backup'] / best['pg_dump'] - 1:+.1%}, "
          f"create_backup() {best['create_backup()'] / best['pg_dump'] - 1:+.1%}, "
          f"restore-test {best['restore-test'] / best['pg_restore']:.2f}x")
    print(json.dumps({"events": events, "dump_bytes": dump_size, "medians_s": med,
                      "best_s": best,
                      "runs_s": times, "backup_overhead": round(overhead, 4),
                      "library_backup_overhead": round(library, 4),
                      "restore_test_ratio": round(ratio, 3)}))


def fill(target: PgTarget, events: int) -> float:
    """Replicate the real events into `events` rows (runs of 100 events), with SQL only."""
    started = time.monotonic()
    with pg.connection(target) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM event_logs")
        have = cur.fetchone()[0]
        todo = max(events - have, 0)
        cur.execute("""
            CREATE TEMP TABLE template_events AS
            SELECT row_number() OVER (ORDER BY id) - 1 AS n, run_id, event, dagster_event_type,
                   timestamp, step_key, asset_key, partition
            FROM event_logs""")
        cur.execute("SELECT count(*) FROM template_events")
        k = cur.fetchone()[0]
        cur.execute("""
            INSERT INTO event_logs (run_id, event, dagster_event_type, timestamp, step_key,
                                    asset_key, partition)
            SELECT x.run_id, replace(t.event, t.run_id, x.run_id), t.dagster_event_type,
                   t.timestamp + g * interval '1 millisecond', t.step_key, t.asset_key,
                   t.partition
            FROM generate_series(0, %s - 1) AS g
            JOIN template_events t ON t.n = g %% %s
            CROSS JOIN LATERAL (SELECT md5(g::text)::uuid::text AS run_id) AS x""", (todo, k))
        cur.execute("""
            INSERT INTO runs (run_id, pipeline_name, status, run_body, snapshot_id,
                              create_timestamp, update_timestamp)
            SELECT 'bench-' || lpad(g::text, 8, '0'), r.pipeline_name, r.status,
                   replace(r.run_body, r.run_id, 'bench-' || lpad(g::text, 8, '0')),
                   r.snapshot_id, r.create_timestamp, r.update_timestamp
            FROM generate_series(0, (%s - 1) / 100) AS g
            CROSS JOIN (SELECT * FROM runs ORDER BY id LIMIT 1) AS r""", (todo,))
    with pg.connection(target, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("VACUUM ANALYZE")
    return time.monotonic() - started


def library_backup(instance, dests: Path) -> tuple[float, str]:
    from dagpg.backup import create_backup
    from dagpg.settings import load_settings

    settings = load_settings(dagster_home=instance.home)
    started = time.perf_counter()
    result = create_backup(instance, settings, directory=dests, kind="benchmark")
    return time.perf_counter() - started, result.name


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run(argv, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{argv[0]} failed: {result.stderr.strip()}")
    return elapsed, result.stdout


if __name__ == "__main__":
    main()
