"""`migrate()`: a SQLite instance's whole history into the PostgreSQL instance, then proof.

Phases: inspect the source (layout, revisions, daemon heartbeats, counts) and the target
(empty, or this tool's own unfinished migration); let Dagster create the target schema; lay out
the global event order; copy tables and events in resumable units; move the sequences; verify
through Dagster's APIs on both instances. Nothing is ever written to the source.
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

import yaml

from dagpg import pg, schema
from dagpg.dbtables import has_table
from dagpg.heartbeats import newest, read_heartbeats
from dagpg.instance import Instance
from dagpg.migrate import revisions as revs
from dagpg.migrate import state
from dagpg.migrate.copier import Copier
from dagpg.migrate.dagster_views import source_instance, target_instance
from dagpg.migrate.errors import (
    AlreadyMigratedError,
    MigrateError,
    SourceInUseError,
    TargetBusyError,
    TargetHasOtherMigrationError,
    TargetNotEmptyError,
    VerificationError,
)
from dagpg.migrate.idmap import EventPlan, check_missing_shards
from dagpg.migrate.pump import EventJob
from dagpg.migrate.report import MigrationReport, TableCount
from dagpg.migrate.source import (
    SourceFiles,
    SourceLayout,
    discover,
    fingerprint,
    sqlite_error,
)
from dagpg.migrate.tables import INDEX, RUNS, SCHEDULES, SKIPPED, TABLES, Transforms, sensor_types
from dagpg.migrate.verify import Verifier
from dagpg.progress import Progress, ProgressFn

log = logging.getLogger(__name__)

DEFAULT_BATCH_ROWS = 50_000
SCRATCH_PREFIX = "dagpg-migrate-"
HEARTBEAT_MAX_AGE_S = 120.0  # Dagster's daemons beat every 30 s


def migrate(instance: Instance, source: str | Path, *, dry_run: bool = False,
            force: bool = False, batch_rows: int = DEFAULT_BATCH_ROWS,
            heartbeat_max_age_s: float = HEARTBEAT_MAX_AGE_S,
            verify_workers: int | None = None,
            progress: ProgressFn | None = None) -> MigrationReport:
    """Migrate SOURCE (old DAGSTER_HOME or SQLite base_dir) into `instance`'s PostgreSQL.

    Raises a DagpgError subclass on bad input (nothing written), VerificationError (with
    `.report`) when the instances differ after the copy. A re-run resumes an interrupted run.
    `verify_workers`: 0 or 1 extra process comparing events (None: 1 on a multi-core machine
    for histories of 100k events or more).
    """
    from dagster.version import __version__ as dagster_version

    if batch_rows < 1:
        raise MigrateError("--batch-rows must be at least 1")
    layout = discover(source)
    say = _Say(progress)
    report = MigrationReport(source=layout.as_dict(), target=instance.target.url(),
                             dagster_version=dagster_version, dry_run=dry_run)
    timer = _Timer(report)
    with ExitStack() as stack:
        scratch = _scratch(stack)
        files = SourceFiles(layout, scratch)

        # 1. Read-only checks of both sides: any bad input stops here, nothing written.
        with timer("inspect"):
            with _closing(files.connect(layout.runs_db)) as runs_conn:
                if not force:
                    _refuse_running_daemon(runs_conn, heartbeat_max_age_s)
            shard_ids = layout.shard_ids()
            say.start("inspect", 3, "files")
            found = revs.check(files, tick=lambda: say.tick(1))
            check_missing_shards(files, shard_ids)
            print_id = fingerprint(layout)
            _note_compute_logs(layout, instance, report)
        with pg.connection(instance.target) as conn:
            resume = _target_decision(conn, instance, layout, print_id)
        report.resumed = resume is not None
        # 2. The global event order; reading every shard also finds a corrupt one, and each
        # shard's schema revision. A source behind Dagster's head is upgraded on a copy first.
        upgraded = False
        if not found.at_head and not dry_run:
            files, upgraded = _upgrade_copy(files, scratch, found, report, timer, say), True
        with timer("plan"):
            say.start("plan", len(shard_ids), "shards")
            plan = stack.enter_context(_closing(EventPlan(scratch / "plan.db")))
            stats = plan.build(files, shard_ids, tick=say.tick)
            if not upgraded:
                found = revs.add(found, plan.revisions)
        if not (found.at_head or dry_run or upgraded):  # only some shards were behind
            files = _upgrade_copy(files, scratch, found, report, timer, say)
            with timer("plan"):
                say.start("plan", len(shard_ids), "shards")
                plan = stack.enter_context(_closing(EventPlan(scratch / "plan-upgraded.db")))
                stats = plan.build(files, shard_ids, tick=say.tick)
        report.revisions = found.as_dict()
        with timer("plan"):
            source_counts = _source_counts(files)
            report.plan = {"shards": len(shard_ids), "events": stats.as_dict(),
                           "tables": source_counts, "skipped": SKIPPED,
                           "batch_rows": batch_rows}
        if dry_run:
            report.status = "dry-run"
            report.notes.append("dry run: nothing was written")
            return report

        # 3. Write: schema, then resumable units, then sequences.
        with timer("schema"):
            say.start("schema", 0, "steps")
            schema.upgrade(instance)
        lock_conn = stack.enter_context(_closing(pg.connect(instance.target, autocommit=True)))
        if not state.try_lock(lock_conn):
            raise TargetBusyError(instance.target.where)
        conn = stack.enter_context(_closing(pg.connect(instance.target)))
        resume = _target_decision(conn, instance, layout, print_id)
        mid = resume.id if resume else state.start(conn, str(layout.given), print_id,
                                                    dagster_version, report.plan)
        report.migration_id, report.resumed = mid, resume is not None
        if stats.ambiguous:
            report.warnings.add("index_only", "event_logs", "index.db events matched out of "
                                "order: kept once, from their shard", count=stats.ambiguous)
        copier = Copier(conn, mid, batch_rows, report.warnings)
        sources = ((RUNS, files.layout.runs_db), (INDEX, files.layout.index_db),
                   (SCHEDULES, files.layout.schedules_db))
        conns = {name: stack.enter_context(_closing(files.connect(path,
                                                                  required=name != SCHEDULES)))
                 for name, path in sources}
        types = sensor_types(conns[SCHEDULES])
        with timer("tables"):
            state.set_phase(conn, mid, "tables")
            say.start("tables", sum(source_counts.values()), "rows")
            transforms = Transforms(plan, report.warnings, types)
            for spec in TABLES:
                if conns[spec.file] is not None:
                    copier.copy_table(spec, conns[spec.file], transforms, tick=say.tick)
        with timer("events"):
            state.set_phase(conn, mid, "events")
            say.start("events", stats.total, "events")
            copier.copy_events(files, plan, shard_ids, tick=say.tick)
        with timer("sequences"):
            copier.reset_sequences()
        report.tables = _table_counts(conn, source_counts, stats.total)
        _compare_run_counts(conn, plan, report)

        # 4. Proof through Dagster's APIs on both instances.
        with timer("verify"):
            state.set_phase(conn, mid, "verify", state.VERIFYING)
            say.start("verify", 0, "checks")
            workers = verify_workers
            if workers is None:  # a second process pays off past its ~2 s start, on 2+ cores
                workers = int((os.cpu_count() or 1) > 1 and stats.total >= 100_000)
            with source_instance(files, scratch) as src, target_instance(instance) as tgt:
                verifier = Verifier(src, tgt, plan.floor, types, copier.dropped,
                                    tick=lambda _c: say.tick(1), target_home=instance.home,
                                    sizes=plan.sizes(), worker_job=EventJob(
                                        layout=files.layout, scratch=scratch,
                                        copies=dict(files.copies), plan_path=plan.path,
                                        shard_ids=[], marker=None, batch_rows=batch_rows)
                                    if workers else None)
                report.verification = verifier.run(shard_ids, conns[INDEX], conns[SCHEDULES],
                                                   conns[RUNS])
        report.status = state.DONE if report.ok else state.FAILED
        state.finish(conn, mid, report.status, report.as_dict())
    if not report.ok:
        error = VerificationError(report.verification.difference_count,
                                  str(report.verification.differences[0]))
        error.report = report
        raise error
    return report


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


def _upgrade_copy(files: SourceFiles, scratch: Path, found, report: MigrationReport, timer,
                  say) -> SourceFiles:
    with timer("upgrade copy"):
        say.start("upgrade copy", 0, "files")
        copied = SourceFiles(revs.upgrade_copy(files, scratch / "upgraded"), scratch)
    report.notes.append(f"the source's schema ({found.found}) was upgraded to {found.head} on "
                        "a private copy; the source is untouched")
    return copied


def _refuse_running_daemon(runs_conn: sqlite3.Connection, max_age_s: float) -> None:
    beat = newest(read_heartbeats(runs_conn))
    if beat is not None and beat.age_s() < max_age_s:
        raise SourceInUseError(beat.daemon_type, max(beat.age_s(), 0), max_age_s)


def _source_counts(files: SourceFiles) -> dict[str, int]:
    layout = files.layout
    counts: dict[str, int] = {}
    for file, path in ((RUNS, layout.runs_db), (INDEX, layout.index_db),
                       (SCHEDULES, layout.schedules_db)):
        conn = files.connect(path, required=file != SCHEDULES)
        if conn is None:
            continue
        try:
            for spec in TABLES:
                if spec.file == file and has_table(conn, spec.name):
                    counts[spec.name] = conn.execute(
                        f'SELECT count(*) FROM "{spec.name}"').fetchone()[0]  # noqa: S608
        except sqlite3.DatabaseError as exc:
            raise sqlite_error(path, exc) from None
        finally:
            conn.close()
    return counts


def _history_counts(conn) -> dict[str, int]:
    """Rows in the target's history tables (those that exist)."""
    out = {}
    with conn.cursor() as cur:
        for name in [*(t.name for t in TABLES if t.name != "instance_info"), "event_logs"]:
            if has_table(cur, f"public.{name}"):
                cur.execute(f'SELECT count(*) FROM (SELECT 1 FROM "{name}" LIMIT 1) t')  # noqa: S608
                out[name] = cur.fetchone()[0]
    conn.rollback()
    return out


def _target_decision(conn, instance: Instance, layout: SourceLayout,
                     print_id: str) -> state.MigrationRow | None:
    """The unfinished migration of this source to resume, None for a fresh start, or raise."""
    where = instance.target.url()
    last = state.latest(conn)
    conn.rollback()
    if last is not None and last.fingerprint == print_id:
        if last.finished:
            raise AlreadyMigratedError(where, last.id, last.source, last.finished_at)
        return last
    if last is not None and not last.finished:
        if last.source == str(layout.given):
            raise MigrateError(f"{layout.given} changed since migration #{last.id} into {where} "
                               "started; recreate the target database and migrate again")
        raise TargetHasOtherMigrationError(where, last.source, last.status)
    busy = {k: v for k, v in _history_counts(conn).items() if v}
    if busy:
        raise TargetNotEmptyError(where, "rows in " + ", ".join(sorted(busy)))
    return None


def _table_counts(conn, source: dict[str, int], events: int) -> list[TableCount]:
    out = []
    with conn.cursor() as cur:
        for spec in TABLES:
            cur.execute(f'SELECT count(*) FROM "{spec.name}"')  # noqa: S608
            out.append(TableCount(spec.name, source.get(spec.name, 0), cur.fetchone()[0]))
        cur.execute("SELECT count(*) FROM event_logs")
        out.append(TableCount("event_logs", events, cur.fetchone()[0],
                              "source: run shards + index-only events"))
    conn.rollback()
    return out


def _compare_run_counts(conn, plan: EventPlan, report: MigrationReport) -> None:
    expected = dict(plan.db.execute(
        "SELECT s.run_key, s.n_rows + (SELECT count(*) FROM anchors a WHERE a.run_key = "
        "s.run_key AND a.pos IS NULL) FROM shards s"))
    with conn.cursor() as cur:
        cur.execute("SELECT COALESCE(run_id, ''), count(*) FROM event_logs GROUP BY 1")
        actual = dict(cur.fetchall())
    conn.rollback()
    report.runs_compared = len(set(expected) | set(actual))
    for run_id in sorted(set(expected) | set(actual)):
        if expected.get(run_id, 0) != actual.get(run_id, 0):
            report.runs_differing.append({"run_id": run_id, "source": expected.get(run_id, 0),
                                          "target": actual.get(run_id, 0)})


def _note_compute_logs(layout: SourceLayout, instance: Instance, report: MigrationReport):
    if layout.yaml_path is None:
        return
    try:
        data = yaml.safe_load(layout.yaml_path.read_text(encoding="utf-8")) or {}
        base = ((data.get("compute_logs") or {}).get("config") or {}).get("base_dir")
    except (OSError, yaml.YAMLError, AttributeError):
        return
    old = Path(base) if isinstance(base, str) else layout.given / "storage"
    if old.is_dir() and old.resolve() != Path(instance.compute_logs_dir).resolve():
        report.notes.append(f"compute logs (stdout/stderr of old runs) are files in {old}; "
                            f"copy them to {instance.compute_logs_dir} to see them in the UI")


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


class _Say:
    """Progress events for one phase at a time."""

    def __init__(self, progress: ProgressFn | None):
        self.progress = progress
        self.phase, self.total, self.unit, self.done = "", 0, "", 0

    def start(self, phase: str, total: int, unit: str) -> None:
        self.phase, self.total, self.unit, self.done = phase, total, unit, 0
        self._emit()

    def tick(self, n: int = 1) -> None:
        self.done += n
        self._emit()

    def _emit(self) -> None:
        if self.progress:
            self.progress(Progress(self.phase, self.done, self.total, self.unit))

