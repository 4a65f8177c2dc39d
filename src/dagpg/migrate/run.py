"""`migrate()`: a SQLite instance's whole history into the PostgreSQL instance, then proof.

The phases, in order (each a method of `_Migration`, named for what it does):

1. `inspect_source`: layout, daemon heartbeats, schema revisions, missing shards, every page of
   every file read (`check`), the compute logs to copy. Read-only: bad input stops here.
2. `examine_target`: empty, this source's unfinished migration, or already done (read-only).
3. `plan_events`: the global event order (a source behind Dagster's head is upgraded on a
   private copy first).
4. `create_schema`: Dagster creates (or repairs) the target schema, and the kit's.
5. `claim_target`: under the migration lock, decide again and record the migration.
6. `copy_tables`, `copy_events`, `reset_sequences`, `copy_compute_logs`: resumable units.
7. `verify`: both instances compared through Dagster's APIs.

Nothing is ever written to the source. Killed at any point, the same command finishes.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

from dagpg import pg, schema
from dagpg.heartbeats import newest, read_heartbeats
from dagpg.instance import Instance
from dagpg.migrate import compute_logs, counts, state, target
from dagpg.migrate import revisions as revs
from dagpg.migrate.copier import Copier
from dagpg.migrate.dagster_views import source_instance, target_instance
from dagpg.migrate.errors import MigrateError, SourceInUseError, TargetBusyError, VerificationError
from dagpg.migrate.idmap import EventPlan, check_missing_shards
from dagpg.migrate.report import MigrationReport
from dagpg.migrate.source import (
    SourceFiles,
    SourceLayout,
    check_integrity,
    discover,
    fingerprint,
)
from dagpg.migrate.tables import INDEX, RUNS, SCHEDULES, SKIPPED, TABLES, Transforms, sensor_types
from dagpg.migrate.verify import Verifier
from dagpg.migrate.verify_worker import EventsWorker, VerifyJob
from dagpg.progress import Progress, ProgressFn

log = logging.getLogger(__name__)

DEFAULT_BATCH_ROWS = 50_000
SCRATCH_PREFIX = "dagpg-migrate-"
HEARTBEAT_MAX_AGE_S = 120.0  # Dagster's daemons beat every 30 s
ALREADY_DONE = "already-done"


def migrate(instance: Instance, source: str | Path, *, dry_run: bool = False,
            force: bool = False, batch_rows: int = DEFAULT_BATCH_ROWS,
            heartbeat_max_age_s: float = HEARTBEAT_MAX_AGE_S,
            verify_workers: int | None = None,
            progress: ProgressFn | None = None) -> MigrationReport:
    """Migrate SOURCE (old DAGSTER_HOME or SQLite base_dir) into `instance`'s PostgreSQL.

    Raises a DagpgError subclass on bad input (nothing written), VerificationError (with
    `.report`) when the instances differ after the copy, ConnectionLostError when PostgreSQL
    goes away. A re-run resumes an interrupted run; once done, a re-run returns a report with
    status "already-done". `verify_workers`: 0 or 1 extra process comparing events (None: 1 on
    a multi-core machine for histories of 100k events or more).
    """
    from dagster.version import __version__ as dagster_version

    if batch_rows < 1:
        raise MigrateError("--batch-rows must be at least 1")
    layout = discover(source)
    report = MigrationReport(source=layout.as_dict(), target=instance.target.url(),
                             dagster_version=dagster_version, dry_run=dry_run)
    say = _Say(progress)
    with ExitStack() as stack, pg.lost_connection(instance.target, lambda: say.doing):
        run = _Migration(instance, layout, report, say, stack, batch_rows)
        run.inspect_source(force=force, heartbeat_max_age_s=heartbeat_max_age_s)
        decision = run.examine_target()
        if decision.done:
            return run.already_done(decision.done)
        run.plan_events(dry_run=dry_run)
        if dry_run:
            report.status = "dry-run"
            report.notes.append("dry run: nothing was written")
            return report
        run.create_schema()
        if run.claim_target() is not None:
            return report  # finished by another run meanwhile
        run.copy_tables()
        run.copy_events()
        run.reset_sequences()
        run.copy_compute_logs()
        run.verify(verify_workers)
        run.finish()
    if not report.ok:
        error = VerificationError(report.verification.difference_count,
                                  str(report.verification.differences[0]))
        error.report = report
        raise error
    return report


class _Migration:
    """The state the phases share; each phase method reads what the earlier ones left."""

    def __init__(self, instance: Instance, layout: SourceLayout, report: MigrationReport,
                 say: _Say, stack: ExitStack, batch_rows: int):
        self.instance, self.layout, self.report, self.say = instance, layout, report, say
        self.stack, self.batch_rows = stack, batch_rows
        self.where = instance.target.url()
        self.timer = _Timer(report)
        self.scratch = _scratch(stack)
        self.files = SourceFiles(layout, self.scratch)

    # -- 1. read-only: any bad input stops here, nothing written -----------------------------
    def inspect_source(self, *, force: bool, heartbeat_max_age_s: float) -> None:
        layout, files = self.layout, self.files
        with self.timer("inspect"):
            with _closing(files.connect(layout.runs_db)) as runs_conn:
                if not force:
                    _refuse_running_daemon(runs_conn, heartbeat_max_age_s)
            self.shard_ids = layout.shard_ids()
            self.say.start("inspect", 3, "files")
            self.revisions = revs.check(files, tick=lambda: self.say.tick(1))
            check_missing_shards(files, self.shard_ids)
            self.fingerprint = fingerprint(layout)
        with self.timer("check"):
            paths = [layout.runs_db, layout.index_db, layout.schedules_db,
                     *(layout.shard_path(r) for r in self.shard_ids)]
            self.say.start("check", len(paths), "files")
            check_integrity(files, paths, tick=self.say.tick)
            self.logs = compute_logs.plan(files, self.instance)
        if self.logs.skipped:
            self.report.notes.append(f"compute logs not copied: {self.logs.skipped}")

    def examine_target(self) -> target.Decision:
        """Refuse a target that will be refused anyway, before any work or write."""
        with pg.connection(self.instance.target) as conn:
            decision = target.examine(conn, self.where, self.layout, self.fingerprint)
        self.report.resumed = decision.resume is not None
        return decision

    def already_done(self, row: state.MigrationRow) -> MigrationReport:
        self.report.status, self.report.migration_id = ALREADY_DONE, row.id
        self.report.notes.append(f"migration #{row.id} of {row.source} into {self.where} "
                                 f"finished {row.finished_at:%Y-%m-%d %H:%M %Z} and the source "
                                 "has not changed since: nothing to do")
        return self.report

    def plan_events(self, *, dry_run: bool) -> None:
        """The global event order. Reading every shard also gives each one's schema revision;
        a source behind Dagster's head is upgraded on a private copy first."""
        found, upgraded = self.revisions, False
        if not found.at_head and not dry_run:
            self._upgrade_copy(found)
            upgraded = True
        self.plan, stats = self._build_plan("plan.db")
        if not upgraded:
            found = revs.add(found, self.plan.revisions)
        if not (found.at_head or dry_run or upgraded):  # only some shards were behind
            self._upgrade_copy(found)
            self.plan, stats = self._build_plan("plan-upgraded.db")
        self.stats = stats
        self.report.revisions = found.as_dict()
        with self.timer("plan"):
            self.source_counts = counts.source_counts(self.files)
            self.report.plan = {"shards": len(self.shard_ids), "events": stats.as_dict(),
                                "tables": self.source_counts, "skipped": SKIPPED,
                                "compute_logs": self.logs.as_dict(),
                                "batch_rows": self.batch_rows}

    # -- 2. write: schema, then resumable units, then sequences -----------------------------
    def create_schema(self) -> None:
        with self.timer("schema"):
            self.say.start("schema", 0, "steps")
            upgrade = schema.upgrade(self.instance)
        self.report.notes.extend(upgrade.repaired)

    def claim_target(self) -> state.MigrationRow | None:
        """Take the migration lock for the rest of the run, decide again under it (the first
        decision was made without it), and record the migration. Returns the migration that
        finished meanwhile, if one did."""
        lock_conn = self.stack.enter_context(_closing(pg.connect(self.instance.target,
                                                                 autocommit=True)))
        if not state.try_lock(lock_conn):
            raise TargetBusyError(self.instance.target.where)
        self.conn = conn = self.stack.enter_context(_closing(pg.connect(self.instance.target)))
        decision, mid = target.claim(conn, self.where, self.layout, self.fingerprint,
                                     self.report.dagster_version, self.report.plan)
        if decision.done:
            self.already_done(decision.done)
            return decision.done
        self.mid = self.report.migration_id = mid
        self.report.resumed = decision.resume is not None
        if decision.restart:
            self.report.notes.append(
                f"{self.layout.given} changed since migration #{decision.restart.id} started "
                f"(a file restored or written to): its partial copy was removed and the "
                f"migration started over as #{mid}")
        if self.stats.ambiguous:
            self.report.warnings.add("index_only", "event_logs", "index.db events matched out "
                                     "of order: kept once, from their shard",
                                     count=self.stats.ambiguous)
        self.copier = Copier(conn, mid, self.batch_rows, self.report.warnings)
        sources = ((RUNS, self.layout.runs_db), (INDEX, self.layout.index_db),
                   (SCHEDULES, self.layout.schedules_db))
        self.conns = {name: self.stack.enter_context(_closing(
            self.files.connect(path, required=name != SCHEDULES))) for name, path in sources}
        self.sensor_types = sensor_types(self.conns[SCHEDULES])
        return None

    def copy_tables(self) -> None:
        with self.timer("tables"):
            state.set_phase(self.conn, self.mid, "tables")
            self.say.start("tables", sum(self.source_counts.values()), "rows")
            transforms = Transforms(self.plan, self.report.warnings, self.sensor_types)
            for spec in TABLES:
                if self.conns[spec.file] is not None:
                    self.copier.copy_table(spec, self.conns[spec.file], transforms,
                                           tick=self.say.tick)

    def copy_events(self) -> None:
        with self.timer("events"):
            state.set_phase(self.conn, self.mid, "events")
            self.say.start("events", self.stats.total, "events")
            self.copier.copy_events(self.files, self.plan, self.shard_ids, tick=self.say.tick)

    def reset_sequences(self) -> None:
        with self.timer("sequences"):
            self.copier.reset_sequences()
        self.report.tables = counts.table_counts(self.conn, self.source_counts,
                                                 self.stats.total)
        counts.compare_run_counts(self.conn, self.plan, self.report)

    def copy_compute_logs(self) -> None:
        with self.timer("logs"):
            state.set_phase(self.conn, self.mid, "logs")
            self.say.start("logs", len(self.logs.files), "files")
            compute_logs.copy(self.conn, self.mid, self.logs, tick=self.say.tick)

    # -- 3. proof through Dagster's APIs on both instances ----------------------------------
    def verify(self, workers: int | None) -> None:
        with self.timer("verify"):
            state.set_phase(self.conn, self.mid, "verify", state.VERIFYING)
            self.say.start("verify", 0, "checks")
            if workers is None:  # a second process pays off past its ~2 s start, on 2+ cores
                workers = int((os.cpu_count() or 1) > 1 and self.stats.total >= 100_000)
            worker = None
            if workers:
                def worker(run_ids: list[str]) -> EventsWorker:
                    return EventsWorker(VerifyJob(self.files, self.plan.path,
                                                  self.instance.home, run_ids))
            with source_instance(self.files, self.scratch) as src, \
                    target_instance(self.instance) as tgt:
                verifier = Verifier(src, tgt, self.plan.ids(), self.sensor_types,
                                    self.copier.dropped, tick=lambda _c: self.say.tick(1),
                                    events_worker=worker, sizes=self.plan.sizes())
                result = verifier.run(self.shard_ids, self.conns[INDEX],
                                      self.conns[SCHEDULES], self.conns[RUNS])
                compute_logs.compare(result, self.logs, tgt.compute_log_manager,
                                     tick=lambda _c: self.say.tick(1))
            self.report.verification = result

    def finish(self) -> None:
        self.report.status = state.DONE if self.report.ok else state.FAILED
        state.finish(self.conn, self.mid, self.report.status, self.report.as_dict())

    # -- helpers -----------------------------------------------------------------------------
    def _build_plan(self, name: str) -> tuple[EventPlan, object]:
        with self.timer("plan"):
            self.say.start("plan", len(self.shard_ids), "shards")
            plan = self.stack.enter_context(_closing(EventPlan(self.scratch / name)))
            return plan, plan.build(self.files, self.shard_ids, tick=self.say.tick)

    def _upgrade_copy(self, found: revs.Revisions) -> None:
        with self.timer("upgrade copy"):
            self.say.start("upgrade copy", 0, "files")
            self.files = SourceFiles(revs.upgrade_copy(self.files, self.scratch / "upgraded"),
                                     self.scratch)
        self.report.notes.append(f"the source's schema ({found.found}) was upgraded to "
                                 f"{found.head} on a private copy; the source is untouched")


def _scratch(stack: ExitStack) -> Path:
    """A private folder for the plan and any copies, removed at the end. A killed migration
    cannot remove its own: the next one removes those whose process is gone."""
    root = Path(tempfile.gettempdir())
    if os.name == "posix":
        for old in root.glob(f"{SCRATCH_PREFIX}*"):
            try:
                pid = int((old / "pid").read_text())
                os.kill(pid, 0)
            except ProcessLookupError:
                shutil.rmtree(old, ignore_errors=True)
            except (OSError, ValueError):
                continue  # alive, not ours to judge, or still being created
    scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=SCRATCH_PREFIX)))
    (scratch / "pid").write_text(str(os.getpid()))
    return scratch


def _refuse_running_daemon(runs_conn: sqlite3.Connection, max_age_s: float) -> None:
    beat = newest(read_heartbeats(runs_conn))
    if beat is not None and beat.age_s() < max_age_s:
        raise SourceInUseError(beat.daemon_type, max(beat.age_s(), 0), max_age_s)


@contextmanager
def _closing(conn):
    try:
        yield conn
    finally:
        if conn is not None:
            conn.close()


class _Timer:
    def __init__(self, report: MigrationReport):
        self.report = report

    @contextmanager
    def __call__(self, phase: str):
        start = time.monotonic()
        try:
            yield
        finally:
            self.report.timings[phase] = self.report.timings.get(phase, 0) + \
                time.monotonic() - start


_DOING = {"inspect": "reading the source", "check": "checking the source",
          "plan": "planning the copy", "schema": "creating the target's schema",
          "tables": "copying tables", "events": "copying events",
          "logs": "copying compute logs", "verify": "verifying the copy"}


class _Say:
    """Progress events for one phase at a time."""

    def __init__(self, progress: ProgressFn | None):
        self.progress = progress
        self.phase, self.total, self.unit, self.done = "", 0, "", 0

    @property
    def doing(self) -> str:
        return _DOING.get(self.phase, f"migrating ({self.phase})" if self.phase else "starting")

    def start(self, phase: str, total: int, unit: str) -> None:
        self.phase, self.total, self.unit, self.done = phase, total, unit, 0
        self._emit()

    def tick(self, n: int = 1) -> None:
        self.done += n
        self._emit()

    def _emit(self) -> None:
        if self.progress:
            self.progress(Progress(self.phase, self.done, self.total, self.unit))
