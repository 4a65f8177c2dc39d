"""The deleting: bounded transactions, each leaving a state Dagster reads as whole.

Runs are taken in chunks, oldest first, and each chunk's runs are grouped so that a group's rows
fit in `batch_rows` (counted per run first, from the run_id index). Logs tier: one transaction per
group deletes the group's bulky events; a run interrupted there is one whose logs are partly
gone, which is what the logs tier makes anyway. Runs tier: one transaction per group deletes the
runs whole (events, their tags, check executions, concurrency slots, tags, the run), so a run is
there or gone. A run with more rows than a batch alone loses its bulky events, then its other
non-status events, `batch_rows` at a time, before the transaction that deletes the rest.

Every row is read once. Transactions commit without waiting for the WAL to reach the disk
(synchronous_commit off: a server crash may undo the last few, which the next prune redoes),
except the last of each chunk, which waits for all before it; only then are the chunk's compute
log folders deleted. Each transaction has lock_timeout and statement_timeout; one that hits a
lock, a deadlock or a timeout is retried, then given up.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import psycopg2
import psycopg2.errors

from dagpg.dbtables import has_table
from dagpg.progress import ProgressFn
from dagpg.prune import events, logfiles, tables
from dagpg.prune.errors import PruneIncompleteError
from dagpg.prune.report import PruneReport
from dagpg.wording import count as counted

log = logging.getLogger(__name__)

RUN_CHUNK = 500  # runs counted together; their compute logs go when the chunk is durable
RETRIES = 5
_RETRYABLE = (psycopg2.errors.LockNotAvailable, psycopg2.errors.DeadlockDetected,
              psycopg2.errors.SerializationFailure, psycopg2.errors.QueryCanceled)
_PARAMS = {"bulky": list(events.BULKY_TYPES), "status": list(events.RUN_STATUS_TYPES),
           "finished": list(events.FINISHED_STATUSES)}
_BULKY = "run_id = ANY(%(runs)s) AND " + events.BULKY_SQL
_NOT_STATUS = ("run_id = ANY(%(runs)s) AND (dagster_event_type IS NULL "
               "OR dagster_event_type <> ALL(%(status)s))")


@dataclass
class _Done:
    """What one transaction deleted, added to the report only once it committed."""

    events: Counter = field(default_factory=Counter)
    rows: Counter = field(default_factory=Counter)
    slots_freed: int = 0
    runs: list[str] = field(default_factory=list)
    count: int = 0  # events deleted


class Deleter:
    def __init__(self, conn, report: PruneReport, say: ProgressFn,
                 files: logfiles.Remover):
        self.conn = conn
        self.report = report
        self.files = files
        self.say = say
        self.batch = report.policy.batch_rows
        self.has_slots = _exists(conn, "concurrency_slots")
        self.vacuum_owed = False  # recorded before the first delete (tables.owe_vacuum)

    # -- logs tier -----------------------------------------------------------------------

    def logs(self, run_ids: Sequence[str]) -> None:
        seen = 0
        for chunk in _chunks(run_ids, RUN_CHUNK):
            sizes = self._events_per_run(chunk, _BULKY)  # a run pruned before has none left
            busy = [r for r in chunk if sizes[r]]
            for group, alone in _groups(busy, sizes, self.batch):
                if alone:
                    self._in_parts(group, _BULKY, tags=False)
                else:
                    self._commit(lambda cur, g=group: self._delete_where(cur, _BULKY, g))
            self._durable()
            self.files.submit(chunk)  # all: a killed prune may have left a run's files
            self.report.runs_logs_pruned += len(busy)
            seen += len(chunk)
            self.say(f"logs: {seen}/{len(run_ids)} runs, "
                     f"{counted(self.report.events_total, 'event')} deleted")

    # -- runs tier -----------------------------------------------------------------------

    def runs(self, run_ids: Sequence[str]) -> None:
        for chunk in _chunks(run_ids, RUN_CHUNK):
            sizes = self._rows_per_run(chunk)
            checks = self._check_ids(chunk)
            gone: list[str] = []
            for group, alone in _groups(chunk, sizes, self.batch):
                if alone:  # its bulky events, then its other non-status events, in parts
                    self._in_parts(group, _BULKY, tags=False)
                    self._in_parts(group, _NOT_STATUS, tags=True)
                gone += self._delete_runs(group, checks)
            self._durable()
            self.files.submit(gone)
            self.say(f"runs: {self.report.runs_deleted}/{len(run_ids)} deleted, "
                     f"{counted(self.report.events_total, 'event')} deleted")

    def _delete_runs(self, group: list[str], checks: dict[str, list[int]]) -> list[str]:
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
        return done.runs

    # -- shared --------------------------------------------------------------------------

    def _in_parts(self, runs: list[str], where: str, *, tags: bool) -> None:
        """Delete the events `where` selects, `batch_rows` (with their tags) per transaction."""
        limit = max(1, self.batch // 2) if tags else self.batch  # an asset event has tags
        while True:
            done = self._commit(lambda cur: self._delete_where(cur, where, runs, limit=limit,
                                                               tags=tags))
            if done.count < limit:
                return

    def _delete_where(self, cur, where: str, runs: list[str], *, limit: int | None = None,
                      tags: bool = False) -> _Done:
        done = _Done()
        params = {**_PARAMS, "runs": runs}
        if limit is None:
            delete = f"DELETE FROM event_logs WHERE {where}"  # noqa: S608  (constants)
        else:
            cur.execute(f"SELECT id FROM event_logs WHERE {where} LIMIT %(limit)s",  # noqa: S608
                        {**params, "limit": limit})
            params["ids"] = [i for (i,) in cur.fetchall()]
            delete = "DELETE FROM event_logs WHERE id = ANY(%(ids)s)"
            if tags:
                cur.execute("DELETE FROM asset_event_tags WHERE event_id = ANY(%(ids)s)", params)
                done.rows["asset_event_tags"] += cur.rowcount
        self._count_deleted(cur, delete, params, done)
        return done

    @staticmethod
    def _count_deleted(cur, delete: str, params: dict, done: _Done) -> None:
        cur.execute(f"WITH gone AS ({delete} RETURNING dagster_event_type) "  # noqa: S608
                    "SELECT dagster_event_type, count(*) FROM gone GROUP BY 1", params)
        for kind, count in cur.fetchall():
            done.events[events.type_name(kind)] += count
            done.count += count

    def _durable(self) -> None:
        """Wait until every commit so far is on disk (compute logs are deleted only then)."""
        with self.conn.cursor() as cur:
            cur.execute("SET LOCAL synchronous_commit = on")
            cur.execute("SELECT txid_current()")  # a transaction id: its commit is flushed
        self.conn.commit()

    def _commit(self, work: Callable) -> _Done:
        """Run `work(cursor)` in one transaction, retrying what a busy instance may cause."""
        if not self.vacuum_owed:
            tables.owe_vacuum(self.conn)
            self.vacuum_owed = True
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
        report.rows_deleted.update(done.rows)
        report.slots_freed += done.slots_freed
        return done

    def _events_per_run(self, runs: list[str], where: str = "run_id = ANY(%(runs)s)") -> Counter:
        with self.conn.cursor() as cur:
            cur.execute(f"SELECT run_id, count(*) FROM event_logs WHERE {where} "  # noqa: S608
                        "GROUP BY 1", {**_PARAMS, "runs": runs})
            found = Counter(dict(cur.fetchall()))
        self.conn.commit()
        return found

    def _rows_per_run(self, runs: list[str]) -> Counter:
        """Rows each run holds: events, their tags, run tags, check executions, itself."""
        rows: Counter = Counter({r: 1 for r in runs})
        rows.update(self._events_per_run(runs))
        with self.conn.cursor() as cur:
            for query in (
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


def _groups(runs: list[str], sizes: Counter, batch: int) -> Iterator[tuple[list[str], bool]]:
    """Consecutive runs whose rows fit in a batch; (group, False). A run bigger than a batch on
    its own: ([run], True)."""
    group: list[str] = []
    size = 0
    for run_id in runs:
        rows = sizes[run_id]
        if rows > batch:
            if group:
                yield group, False
                group, size = [], 0
            yield [run_id], True
            continue
        if group and size + rows > batch:
            yield group, False
            group, size = [], 0
        group.append(run_id)
        size += rows
    if group:
        yield group, False


def _exists(conn, table: str) -> bool:
    with conn.cursor() as cur:
        found = has_table(cur, table)
    conn.commit()
    return found


def _chunks(items: Sequence, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
