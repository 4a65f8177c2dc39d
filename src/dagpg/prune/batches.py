"""The deleting: bounded transactions, each leaving a state Dagster reads as whole.

Logs tier: a run's bulky events go by primary key, `batch_rows` per transaction; an interrupted
run is one whose logs are partly gone, which is what the logs tier makes anyway. Runs tier: after
its logs, a run's remaining rows (status, step and asset events, their tags, check executions,
tags, concurrency slots, the run) go in one transaction, several runs per transaction up to
`batch_rows` rows, so a run is there or gone. A run with more rows than that left (thousands of
asset events) loses its non-status events in batches first. Each transaction sets lock_timeout and
statement_timeout; one that hits a lock, a deadlock or a timeout is retried, then given up.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import psycopg2
import psycopg2.errors

from dagpg.prune import events, logfiles
from dagpg.prune.errors import PruneIncompleteError
from dagpg.prune.report import PruneReport

log = logging.getLogger(__name__)

RUN_CHUNK = 500  # runs looked at together
RETRIES = 5
_RETRYABLE = (psycopg2.errors.LockNotAvailable, psycopg2.errors.DeadlockDetected,
              psycopg2.errors.SerializationFailure, psycopg2.errors.QueryCanceled)
_PARAMS = {"bulky": list(events.BULKY_TYPES), "status": list(events.RUN_STATUS_TYPES),
           "finished": list(events.FINISHED_STATUSES)}


@dataclass
class _Done:
    """What one transaction deleted, added to the report only once it committed."""

    events: Counter = field(default_factory=Counter)
    event_bytes: int = 0
    rows: Counter = field(default_factory=Counter)
    slots_freed: int = 0
    runs: list[str] = field(default_factory=list)


class Deleter:
    def __init__(self, conn, report: PruneReport, say: Callable[[str], None]):
        self.conn = conn
        self.report = report
        self.say = say
        self.batch = report.policy.batch_rows
        self.has_slots = _exists(conn, "concurrency_slots")

    # -- logs tier -----------------------------------------------------------------------

    def logs(self, run_ids: Sequence[str]) -> None:
        done_runs = 0
        for chunk in _chunks(run_ids, RUN_CHUNK):
            ids = self._ids("SELECT id FROM event_logs WHERE run_id = ANY(%(runs)s) AND "  # noqa: S608
                            + events.BULKY_SQL + " ORDER BY id", chunk)  # constants only
            for part in _chunks(ids, self.batch):
                self._commit(lambda cur, part=part: self._delete_events(cur, part, tags=False))
            logfiles.delete_runs(self.report.log_files, chunk)
            done_runs += len(chunk)
            self.report.runs_logs_pruned = done_runs
            self.say(f"logs: {done_runs}/{len(run_ids)} runs, {self.report.events_total:,} "
                     "events deleted")

    # -- runs tier -----------------------------------------------------------------------

    def runs(self, run_ids: Sequence[str]) -> None:
        for chunk in _chunks(run_ids, RUN_CHUNK):
            rows = self._rows_per_run(chunk)
            checks = self._check_ids(chunk)
            group: list[str] = []
            size = 0
            for run_id in chunk:
                if rows[run_id] > self.batch:  # alone, after its non-status events
                    if group:
                        self._delete_runs(group, checks)
                        group, size = [], 0
                    self._shrink(run_id)
                    self._delete_runs([run_id], checks)
                    continue
                if group and size + rows[run_id] > self.batch:
                    self._delete_runs(group, checks)
                    group, size = [], 0
                group.append(run_id)
                size += rows[run_id]
            if group:
                self._delete_runs(group, checks)
            self.say(f"runs: {self.report.runs_deleted}/{len(run_ids)} deleted, "
                     f"{self.report.events_total:,} events deleted")

    def _delete_runs(self, group: list[str], checks: dict[str, list[int]]) -> None:
        def work(cur) -> _Done:
            cur.execute("SELECT run_id FROM runs WHERE run_id = ANY(%(runs)s) "
                        "AND status = ANY(%(finished)s) FOR UPDATE", {**_PARAMS, "runs": group})
            runs = [r for (r,) in cur.fetchall()]  # a run no longer finished stays
            done = _Done(runs=runs)
            if not runs:
                return done
            params = {**_PARAMS, "runs": runs}
            cur.execute("DELETE FROM asset_event_tags WHERE event_id IN "
                        "(SELECT id FROM event_logs WHERE run_id = ANY(%(runs)s))", params)
            done.rows["asset_event_tags"] += cur.rowcount
            self._count_deleted(cur, "DELETE FROM event_logs WHERE run_id = ANY(%(runs)s)",
                                params, done)
            check_ids = [i for r in runs for i in checks.get(r, [])]
            if check_ids:
                cur.execute("DELETE FROM asset_check_executions WHERE id = ANY(%s)",
                            (check_ids,))
                done.rows["asset_check_executions"] += cur.rowcount
            if self.has_slots:  # what Dagster's free_concurrency_slots_for_run does
                cur.execute("DELETE FROM concurrency_slots WHERE run_id = ANY(%(runs)s) "
                            "AND deleted", params)
                cur.execute("UPDATE concurrency_slots SET run_id = NULL, step_key = NULL "
                            "WHERE run_id = ANY(%(runs)s)", params)
                done.slots_freed += cur.rowcount
                cur.execute("DELETE FROM pending_steps WHERE run_id = ANY(%(runs)s)", params)
                done.rows["pending_steps"] += cur.rowcount
            cur.execute("DELETE FROM run_tags WHERE run_id = ANY(%(runs)s)", params)
            done.rows["run_tags"] += cur.rowcount
            cur.execute("DELETE FROM runs WHERE run_id = ANY(%(runs)s)", params)
            done.rows["runs"] += cur.rowcount
            return done

        done = self._commit(work)
        self.report.runs_deleted += len(done.runs)
        logfiles.delete_runs(self.report.log_files, done.runs)

    def _shrink(self, run_id: str) -> None:
        """A run with more rows than a batch: its non-status events (and their tags) first."""
        with self.conn.cursor() as cur:
            cur.execute("SELECT e.id, (SELECT count(*) FROM asset_event_tags t "
                        "WHERE t.event_id = e.id) FROM event_logs e WHERE e.run_id = %(run)s "
                        "AND (e.dagster_event_type IS NULL "
                        "OR e.dagster_event_type <> ALL(%(status)s)) ORDER BY e.id",
                        {**_PARAMS, "run": run_id})
            rows = cur.fetchall()
        self.conn.commit()
        part: list[int] = []
        size = 0
        for event_id, tags in rows:
            if part and size + 1 + tags > self.batch:
                self._commit(lambda cur, part=part: self._delete_events(cur, part, tags=True))
                part, size = [], 0
            part.append(event_id)
            size += 1 + tags
        if part:
            self._commit(lambda cur: self._delete_events(cur, part, tags=True))

    # -- shared --------------------------------------------------------------------------

    def _delete_events(self, cur, ids: list[int], *, tags: bool) -> _Done:
        done = _Done()
        if tags:
            cur.execute("DELETE FROM asset_event_tags WHERE event_id = ANY(%s)", (ids,))
            done.rows["asset_event_tags"] += cur.rowcount
        self._count_deleted(cur, "DELETE FROM event_logs WHERE id = ANY(%(ids)s)",
                            {"ids": ids}, done)
        return done

    @staticmethod
    def _count_deleted(cur, delete: str, params: dict, done: _Done) -> None:
        cur.execute(f"WITH gone AS ({delete} RETURNING dagster_event_type, "  # noqa: S608
                    "pg_column_size(event) AS size) SELECT dagster_event_type, count(*), "
                    "coalesce(sum(size), 0) FROM gone GROUP BY 1", params)
        for kind, count, size in cur.fetchall():
            done.events[events.type_name(kind)] += count
            done.event_bytes += int(size)

    def _commit(self, work: Callable) -> _Done:
        """Run `work(cursor)` in one transaction, retrying what a busy instance may cause."""
        for attempt in range(1, RETRIES + 1):
            try:
                with self.conn.cursor() as cur:
                    done = work(cur)
                self.conn.commit()
                break
            except _RETRYABLE as exc:
                self.conn.rollback()
                reason = _first_line(exc)
                if attempt == RETRIES:
                    raise PruneIncompleteError(
                        f"a batch failed {RETRIES} times ({reason}); if it names a timeout, "
                        "lower dagpg.retention.batch_rows or raise statement_timeout_s",
                        self.report) from None
                log.info("batch failed (%s); retry %d of %d", reason, attempt, RETRIES - 1)
                time.sleep(0.5 * 2 ** (attempt - 1))
        report = self.report
        report.transactions += 1
        report.events_deleted.update(done.events)
        report.event_bytes += done.event_bytes
        report.rows_deleted.update(done.rows)
        report.slots_freed += done.slots_freed
        return done

    def _ids(self, query: str, runs: list[str]) -> list[int]:
        with self.conn.cursor() as cur:
            cur.execute(query, {**_PARAMS, "runs": runs})
            ids = [i for (i,) in cur.fetchall()]
        self.conn.commit()
        return ids

    def _rows_per_run(self, runs: list[str]) -> Counter:
        """Rows each run still holds: events, their tags, run tags, check executions, itself."""
        rows: Counter = Counter({r: 1 for r in runs})
        with self.conn.cursor() as cur:
            for query in (
                "SELECT run_id, count(*) FROM event_logs WHERE run_id = ANY(%(runs)s) GROUP BY 1",
                "SELECT e.run_id, count(*) FROM asset_event_tags t JOIN event_logs e "
                "ON e.id = t.event_id WHERE e.run_id = ANY(%(runs)s) GROUP BY 1",
                "SELECT run_id, count(*) FROM run_tags WHERE run_id = ANY(%(runs)s) GROUP BY 1",
                "SELECT run_id, count(*) FROM asset_check_executions "
                "WHERE run_id = ANY(%(runs)s) GROUP BY 1",
            ):
                cur.execute(query, {"runs": runs})
                rows.update(dict(cur.fetchall()))
        self.conn.commit()
        return rows

    def _check_ids(self, runs: list[str]) -> dict[str, list[int]]:
        with self.conn.cursor() as cur:
            cur.execute("SELECT run_id, id FROM asset_check_executions "
                        "WHERE run_id = ANY(%s)", (runs,))
            found: dict[str, list[int]] = {}
            for run_id, check_id in cur.fetchall():
                found.setdefault(run_id, []).append(check_id)
        self.conn.commit()
        return found


def _exists(conn, table: str) -> bool:
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (table,))
        found = bool(cur.fetchone()[0])
    conn.commit()
    return found


def _chunks(items: Sequence, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
