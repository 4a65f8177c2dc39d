"""`prune_history()`: the library call behind `dagpg prune` and the nightly step."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

import psycopg2
import psycopg2.errors

from dagpg import pg
from dagpg.instance import Instance
from dagpg.progress import ProgressFn
from dagpg.prune import events, logfiles, tables
from dagpg.prune.batches import RUN_CHUNK, Deleter, _chunks
from dagpg.prune.errors import NoRecentBackupError, PruneIncompleteError, PruneInProgressError
from dagpg.prune.plan import make_plan
from dagpg.prune.policy import make_policy
from dagpg.prune.report import PruneReport
from dagpg.settings import KitSettings
from dagpg.wording import count

log = logging.getLogger(__name__)

LOCK_KEY = 7_160_012  # beside backup's 7_160_005: one prune of an instance at a time
LOCK_WAIT_S = 15.0  # a killed prune's session may take a moment to end


def prune_history(
    instance: Instance,
    settings: KitSettings,
    *,
    older_than: str | float | None = None,
    logs_older_than: str | float | None = None,
    runs_older_than: str | float | None = None,
    keep_last_runs: int | None = None,
    batch_rows: int | None = None,
    only: str | None = None,
    dry_run: bool = False,
    force: bool = False,
    progress: ProgressFn | None = None,
    now: datetime | None = None,
) -> PruneReport:
    """Delete the bulky events of finished runs older than dagpg.retention.logs_days and whole
    runs older than runs_days, keeping what Dagster's asset catalog reads (see plan.py), in
    bounded transactions; then VACUUM (ANALYZE). Killed at any moment, run it again: it finishes
    with the same result. Refuses without a verified backup younger than
    dagpg.verify.backup_max_age_h unless `force`. `dry_run` counts and changes nothing.
    `older_than` overrides the runs tier's age (the logs tier's with `only="logs"`).

    Raises AgeError/ConfigurationError (bad values), DatabaseError (unreachable),
    NoRecentBackupError, PruneInProgressError, PruneIncompleteError (carries the report of what
    was done)."""
    started = time.monotonic()
    say = progress or (lambda _msg: None)
    policy = make_policy(settings, older_than=older_than, logs_older_than=logs_older_than,
                         runs_older_than=runs_older_than, keep_last_runs=keep_last_runs,
                         batch_rows=batch_rows, only=only, now=now)
    report = PruneReport(policy=policy, dry_run=dry_run, log_files=logfiles.for_instance(instance))
    conn = pg.connect(instance.target)
    try:
        report.backup = backup_gate(instance, settings, force=force, dry_run=dry_run,
                                    now=policy.now)
        _lock(conn, instance)
        _session(conn, policy)
        report.sizes_before = tables.sizes(conn)
        per_row = tables.row_bytes(conn)
        say("planning: which runs are old, which the asset catalog still needs")
        report.plan = make_plan(conn, policy)
        conn.commit()
        plan = report.plan
        say(f"plan: logs of {count(len(plan.logs_runs), 'run')}, "
            f"{count(len(plan.delete_runs), 'run')} whole, "
            f"{count(len(plan.kept_for_catalog), 'old run')} kept for the asset catalog")
        if dry_run:
            _estimate(conn, report, per_row)
            logfiles.delete_runs(report.log_files, [*plan.logs_runs, *plan.delete_runs],
                                 dry_run=True)
            logfiles.sweep_orphans(report.log_files, conn, dry_run=True)
            report.complete = True
            return report
        owed = tables.vacuum_owed(conn)  # a former prune was stopped before its VACUUM
        with logfiles.Remover(report.log_files) as files:
            deleter = Deleter(conn, report, say, files)
            deleter.logs(plan.logs_runs)
            deleter.runs(plan.delete_runs)
        logfiles.sweep_orphans(report.log_files, conn)
        if report.transactions or owed:
            say("VACUUM (ANALYZE) of the pruned tables")
            touched = [t for t in tables.TOUCHED if t in report.sizes_before]
            report.vacuumed, busy = tables.vacuum(conn, touched)
            if busy:
                report.notes.append(f"VACUUM skipped {', '.join(busy)}: another session held "
                                    "its lock past lock_timeout; autovacuum will do it")
            tables.vacuum_paid(conn)
        report.sizes_after = tables.sizes(conn)
        report.estimated_bytes = _freed(report, per_row)
        report.complete = not report.log_files.errors
        if report.log_files.errors:
            report.notes.append(f"{len(report.log_files.errors)} compute log folders could not "
                                "be deleted (see compute_logs.errors); run again to retry")
        return report
    except psycopg2.errors.LockNotAvailable as exc:  # planning: batches retry on their own
        raise PruneIncompleteError(
            f"another session held a table it reads longer than dagpg.retention.lock_timeout_ms "
            f"= {policy.lock_timeout_ms} ({_first(exc)})", report) from None
    except psycopg2.errors.QueryCanceled as exc:
        raise PruneIncompleteError(
            f"a statement ran longer than dagpg.retention.statement_timeout_s = "
            f"{policy.statement_timeout_s:g} ({_first(exc)})", report) from None
    except psycopg2.OperationalError as exc:
        raise PruneIncompleteError(f"lost the connection to PostgreSQL ({_first(exc)})",
                                   report) from None
    except psycopg2.Error as exc:  # e.g. a table missing: not a Dagster schema at head
        raise PruneIncompleteError(
            f"PostgreSQL refused a statement ({_first(exc)}); if `dagpg db upgrade` has not "
            "run on this instance, run it first", report) from None
    finally:
        report.duration_s = time.monotonic() - started
        conn.close()


def backup_gate(instance: Instance, settings: KitSettings, *, force: bool, dry_run: bool,
                now: datetime | None = None) -> dict:
    """The newest verified backup (the undo), or NoRecentBackupError. Forced or dry: never
    refuses, says what it found."""
    from dagpg.backup import catalog

    limit_h = settings.verify.backup_max_age_h
    now = now or datetime.now(UTC)
    verified = [b for b in catalog.all_backups(instance)
                if b.verified and b.finished_at and b.path.is_dir()]
    newest = max(verified, key=lambda b: b.finished_at, default=None)
    age_h = (now - newest.finished_at).total_seconds() / 3600 if newest else None
    found = {"name": newest.name if newest else None,
             "age_h": round(age_h, 2) if age_h is not None else None,
             "max_age_h": limit_h, "forced": force}
    if newest is None or age_h > limit_h:
        if not (force or dry_run):
            raise NoRecentBackupError(newest.name if newest else None, age_h, limit_h)
        found["recent_enough"] = False
    else:
        found["recent_enough"] = True
    return found


def _lock(conn, instance: Instance) -> None:
    deadline = time.monotonic() + LOCK_WAIT_S
    with conn.cursor() as cur:
        while True:
            cur.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,))
            if cur.fetchone()[0]:
                break
            if time.monotonic() > deadline:
                cur.execute(
                    "SELECT a.pid, a.application_name, a.client_addr, a.backend_start "
                    "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                    "WHERE l.locktype = 'advisory' AND l.objid = %s AND l.granted", (LOCK_KEY,))
                row = cur.fetchone()
                holder = (f"session {row[0]} ({row[1] or 'no name'}) since "
                          f"{row[3]:%Y-%m-%d %H:%M:%S}" if row else "its lock is held")
                raise PruneInProgressError(instance.target.where, holder)
            time.sleep(0.5)
    conn.commit()


def _session(conn, policy) -> None:
    with conn.cursor() as cur:
        cur.execute("SET application_name = 'dagpg prune'")
        cur.execute("SET synchronous_commit = off")  # see batches.py: made durable per chunk
        cur.execute("SELECT set_config('lock_timeout', %s, false), "
                    "set_config('statement_timeout', %s, false)",
                    (f"{policy.lock_timeout_ms}ms", f"{int(policy.statement_timeout_s * 1000)}ms"))
    conn.commit()


def _freed(report: PruneReport, per_row: dict[str, float]) -> int:
    """Table bytes the deleted rows took, from each table's average row size before."""
    return int(report.events_total * per_row.get("event_logs", 0) + sum(
        n * per_row.get(t, 0) for t, n in report.rows_deleted.items()))


def _estimate(conn, report: PruneReport, per_row: dict[str, float]) -> None:
    """A dry run: the events each tier would delete, by type, and the bytes they take."""
    plan = report.plan
    going = set(plan.delete_runs)
    with conn.cursor() as cur:
        for query, runs in (
            (f"run_id = ANY(%(runs)s) AND {events.BULKY_SQL}", plan.logs_runs),
            ("run_id = ANY(%(runs)s)", plan.delete_runs),
        ):
            for chunk in _chunks(runs, RUN_CHUNK):
                cur.execute("SELECT dagster_event_type, count(*), "  # noqa: S608 (constants)
                            "coalesce(sum(pg_column_size(event)), 0) FROM event_logs WHERE "
                            + query + " GROUP BY 1",
                            {"runs": chunk, "bulky": list(events.BULKY_TYPES)})
                for kind, count, size in cur.fetchall():
                    report.events_deleted[events.type_name(kind)] += count
                    report.event_bytes += int(size)
        for chunk in _chunks(plan.logs_runs, RUN_CHUNK):  # runs with logs left to lose
            cur.execute("SELECT count(DISTINCT run_id) FROM event_logs WHERE "  # noqa: S608
                        "run_id = ANY(%(runs)s) AND " + events.BULKY_SQL,
                        {"runs": chunk, "bulky": list(events.BULKY_TYPES)})
            report.runs_logs_pruned += cur.fetchone()[0]
        for table, query in (
            ("run_tags", "SELECT count(*) FROM run_tags WHERE run_id = ANY(%s)"),
            ("asset_check_executions",
             "SELECT count(*) FROM asset_check_executions WHERE run_id = ANY(%s)"),
            ("asset_event_tags", "SELECT count(*) FROM asset_event_tags t JOIN event_logs e "
                                 "ON e.id = t.event_id WHERE e.run_id = ANY(%s)"),
        ):
            for chunk in _chunks(sorted(going), RUN_CHUNK):
                cur.execute(query, (chunk,))
                report.rows_deleted[table] += cur.fetchone()[0]
    conn.commit()
    report.rows_deleted["runs"] = len(going)
    report.runs_deleted = len(plan.delete_runs)
    report.estimated_bytes = _freed(report, per_row)


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
