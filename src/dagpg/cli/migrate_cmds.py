"""`dagpg migrate-from-sqlite`: a SQLite instance's history into the PostgreSQL instance."""

from __future__ import annotations

import sys
import time

import click

from dagpg.cli.options import dagster_home_option, emit_json, json_option, silent_option, yes_option
from dagpg.instance import resolve_instance
from dagpg.migrate import DEFAULT_BATCH_ROWS, MigrationReport, migrate
from dagpg.migrate.errors import VerificationError
from dagpg.migrate.run import ALREADY_DONE
from dagpg.progress import Progress

# one line per committed unit when stderr is not a terminal
_LINE_PHASES = {"tables", "events", "logs"}


@click.command("migrate-from-sqlite")
@click.argument("source", metavar="SOURCE")
@dagster_home_option
@click.option("--dry-run", is_flag=True, help="Print the plan and the counts; write nothing.")
@yes_option
@click.option("--force", is_flag=True,
              help="Migrate even though the SQLite instance's daemon heart-beat recently.")
@click.option("--batch-rows", type=click.IntRange(min=1), default=DEFAULT_BATCH_ROWS,
              show_default=True, metavar="N", help="Rows per committed (resumable) unit.")
@json_option
@silent_option
def migrate_from_sqlite(source, dagster_home, dry_run, yes, force, batch_rows, as_json,
                        silent) -> None:
    """Move a SQLite instance's whole history into the PostgreSQL instance.

    SOURCE is the old DAGSTER_HOME (its dagster.yaml's `storage: sqlite: base_dir`, or the
    default layout under it) or the SQLite base_dir itself; it is only ever read. The target
    is the instance of --dagster-home: its database must be empty. Every page of every SQLite
    file is read first: a damaged file is refused before anything is written. Dagster creates
    the schema, then runs, events (re-numbered in one global order), assets, checks,
    partitions, backfills, schedules, sensors (cursors remapped), ticks and the compute logs
    (captured stdout/stderr, into the target's compute-log folder) are copied in resumable
    units, and both instances are compared through Dagster's APIs. Interrupted? Run it again:
    it resumes, starts over if the source changed meanwhile, and says when nothing is left.

    Exit code 0 only when the copy is complete and verified (now or by an earlier run).

    \b
    Example:
      dagpg migrate-from-sqlite /srv/old_dagster_home --dry-run
      dagpg migrate-from-sqlite /srv/old_dagster_home --dagster-home dagster_home --yes
    """
    instance = resolve_instance(dagster_home)
    if not (dry_run or yes):
        click.confirm(f"Copy the history of {source} into {instance.target.url()}?",
                      abort=True, err=True)
    bars = None if (silent or as_json) else _Bars()
    try:
        report = migrate(instance, source, dry_run=dry_run, force=force, batch_rows=batch_rows,
                         progress=bars)
    except VerificationError as exc:
        if bars:
            bars.close()
        _render(exc.report, as_json)
        raise
    finally:
        if bars:
            bars.close()
    _render(report, as_json)


def _render(report: MigrationReport, as_json: bool) -> None:
    if as_json:
        emit_json(report.as_dict())
        return
    echo = click.echo
    data = report.as_dict()
    if report.status == ALREADY_DONE:
        echo(f"Already migrated: {report.source['source']} -> {report.target} "
             f"[migration #{report.migration_id}]")
        for note in report.notes:
            echo(f"Note: {note}")
        return
    head = "Dry run (nothing written)" if report.dry_run else "Migrated"
    resumed = ", resumed" if report.resumed else ""
    number = f" [migration #{report.migration_id}{resumed}]" if report.migration_id else ""
    echo(f"{head}: {report.source['source']} -> {report.target}{number}")
    revisions = data["revisions"]
    if revisions:
        state = "at head" if revisions["at_head"] else f"upgraded on a copy to {revisions['dagster_head']}"
        echo(f"Source schema: {revisions['source']} ({state}), Dagster {report.dagster_version}")
    if report.dry_run:
        events = data["plan"]["events"]
        echo(f"Run shards: {data['plan']['shards']}, events in them: {events['shard_rows']}, "
             f"events only in index.db: {events['index_only']}; events to copy: "
             f"{events['total']}")
        _table([(t, n, "") for t, n in data["plan"]["tables"].items()], ("table", "SQLite", ""))
    else:
        _table([(t["table"], t["source"], t["target"]) for t in data["tables"]],
               ("table", "SQLite", "PostgreSQL"))
        differing = data["runs"]["differing"]
        echo(f"Runs: {data['runs']['compared']} event counts compared, "
             + (f"{len(differing)} differ" if differing else "all equal"))
    logs = data["plan"].get("compute_logs") or {}
    if logs and not logs["skipped"]:
        echo(f"Compute logs: {logs['files']} files ({logs['bytes']:,} bytes) of {logs['runs']} "
             f"runs and {logs['ticks']} ticks, {logs['source']} -> {logs['target']}")
    for name, why in data["plan"].get("skipped", {}).items():
        echo(f"Not copied: {name} ({why})")
    warnings = data["warnings"]
    echo(f"Warnings: {len(warnings) or 'none'}")
    for w in warnings:
        examples = f"; e.g. {', '.join(w['examples'])}" if w["examples"] else ""
        echo(f"  [{w['kind']}] {w['table']}: {w['message']} ({w['count']}){examples}")
    verification = data["verification"]
    if verification:
        compared = ", ".join(f"{k} {v}" for k, v in verification["compared"].items())
        if verification["ok"]:
            echo(f"Verification through Dagster's APIs: OK ({compared})")
        else:
            echo(f"VERIFICATION FAILED: {verification['difference_count']} difference(s)",
                 err=True)
            for d in verification["differences"]:
                echo(f"  {d['check']} {d['key']}: {d['detail']}", err=True)
    timings = ", ".join(f"{k} {v:.1f}s" for k, v in data["timings_s"].items())
    rate = f" ({data['events_per_s']:,.0f} events/s)" if data["events_per_s"] else ""
    echo(f"Timings: {timings}{rate}")
    for note in report.notes:
        echo(f"Note: {note}")


def _table(rows, header) -> None:
    rows = [header, *rows]
    width = max(len(str(r[0])) for r in rows)
    for name, a, b in rows:
        click.echo(f"  {str(name).ljust(width)}  {str(a).rjust(10)}  {str(b).rjust(10)}")


class _Bars:
    """A progress bar per phase on a terminal; plain lines (one per unit) otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.phase = None
        self.bar = None
        self.done = 0
        self.last_line = 0.0

    def __call__(self, p: str) -> None:
        if not isinstance(p, Progress):  # a plain message, not a count
            click.echo(f"… {p}", err=True)
            return
        if p.phase != self.phase:
            self.close()
            self.phase, self.done = p.phase, 0
            if self.tty and p.total:
                self.bar = click.progressbar(length=p.total, label=f"{p.phase:<8}",
                                             file=sys.stderr, show_pos=True)
                self.bar.__enter__()
            else:
                total = f" ({p.total} {p.unit})" if p.total else ""
                click.echo(f"… {p.phase}{total}", err=True)
        if self.bar is not None:
            self.bar.update(p.done - self.done)
        elif p.done and (p.phase in _LINE_PHASES or p.done == p.total
                         or time.monotonic() - self.last_line > 2):
            of = f"/{p.total}" if p.total else ""
            click.echo(f"… {p.phase}: {p.done}{of} {p.unit}", err=True)
            self.last_line = time.monotonic()
        self.done = p.done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None
