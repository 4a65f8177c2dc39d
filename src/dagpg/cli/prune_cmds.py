"""`dagpg prune` and `dagpg stats`."""

from __future__ import annotations

import sys

import click

from dagpg import wording
from dagpg.backup.create import human_bytes
from dagpg.cli.options import (
    dagster_home_option,
    emit_json,
    emit_table,
    json_option,
    progress_printer,
    silent_option,
    yes_option,
)
from dagpg.errors import EXIT_FAILURE
from dagpg.instance import resolve_instance
from dagpg.prune import PruneIncompleteError, PruneReport, history_stats, prune_history
from dagpg.settings import load_settings
from dagpg.wording import count

_AGE_HELP = "days (30), a number with a unit (30s, 12h, 30d, 8w, 6mo, 1y) or a date (2025-01-31)"


@click.command("prune")
@dagster_home_option
@click.option("--older-than", "older_than", metavar="AGE", default=None,
              help="Delete runs older than AGE whole (--runs-older-than; with --only logs, "
                   f"--logs-older-than): {_AGE_HELP}.")
@click.option("--logs-older-than", metavar="AGE", default=None,
              help="Delete the logs of runs older than AGE. Default: dagpg.retention.logs_days.")
@click.option("--runs-older-than", metavar="AGE", default=None,
              help="Delete runs older than AGE. Default: dagpg.retention.runs_days.")
@click.option("--keep-last-runs", type=click.IntRange(min=1), metavar="N", default=None,
              help="Never touch the newest N runs of each job. Default: "
                   "dagpg.retention.keep_last_runs.")
@click.option("--batch-rows", type=click.IntRange(min=1), metavar="N", default=None,
              help="Rows per transaction. Default: dagpg.retention.batch_rows.")
@click.option("--only", type=click.Choice(["logs", "runs"]), default=None,
              help="Prune one tier only.")
@click.option("--dry-run", is_flag=True,
              help="Show what would go (runs, events by type, bytes); change nothing.")
@click.option("--force", is_flag=True,
              help="Prune even without a verified backup younger than "
                   "dagpg.verify.backup_max_age_h.")
@yes_option
@json_option
@silent_option
def prune(dagster_home, older_than, logs_older_than, runs_older_than, keep_last_runs,
          batch_rows, only, dry_run, force, yes, as_json, silent) -> None:
    """Delete old run history, keeping everything the asset catalog shows.

    Two tiers (dagpg.retention in config.yml): finished runs older than logs_days (30) lose
    their logs (step logs, engine events, captured-output records), keeping the run, its status,
    step and asset events; finished runs older than runs_days (365) are deleted whole, unless
    they hold something the asset catalog reads (a latest materialization or observation, a
    partition's only materialization, a failed partition, a check's latest execution). Runs not
    finished, runs of a backfill in progress and the newest keep_last_runs runs of each job are
    never touched. Deletes in small transactions, safe while Dagster runs, then VACUUM (ANALYZE).
    Killed or stopped? Run it again.

    Refuses without a verified backup younger than dagpg.verify.backup_max_age_h (a backup is
    the undo) unless --force. On a terminal it asks first (--yes: do not ask). Exit code 0 only
    when everything asked for was done.

    \b
    Example:
      dagpg prune --dry-run
      dagpg prune --yes --json
      dagpg prune --older-than 90d --only runs --yes
    """
    inst = resolve_instance(dagster_home)
    settings = load_settings(dagster_home=inst.home)
    # Asked on a terminal only: from a script, the backup gate is the guard.
    if not (yes or dry_run) and sys.stdin is not None and sys.stdin.isatty():
        click.confirm(f"Delete old run history from {inst.target.where}? It cannot be undone "
                      "(but by restoring a backup)", abort=True, err=True)
    try:
        report = prune_history(
            inst, settings, older_than=older_than, logs_older_than=logs_older_than,
            runs_older_than=runs_older_than,
            keep_last_runs=keep_last_runs, batch_rows=batch_rows, only=only, dry_run=dry_run,
            force=force, progress=progress_printer(silent, as_json))
    except PruneIncompleteError as exc:
        if as_json and exc.report is not None:
            emit_json(exc.report.as_dict())
        raise
    if as_json:
        emit_json(report.as_dict())
    else:
        render_prune(report)
    if not report.complete:
        raise click.exceptions.Exit(EXIT_FAILURE)


def render_prune(report: PruneReport) -> None:
    verb = "would delete" if report.dry_run else "deleted"
    plan = report.plan
    backup = report.backup or {}
    rows = [
        ("backup (the undo)", _backup_line(backup)),
        ("logs pruned", count(report.runs_logs_pruned, "run")),
        (f"runs {verb}", str(report.runs_deleted)),
        ("kept for the catalog", count(len(plan.kept_for_catalog), "old run")),
        ("never touched", ", ".join(f"{n} {why}" for why, n in sorted(plan.protected.items()))
         or "none"),
        (f"events {verb}", f"{report.events_total:,}"),
    ]
    rows += [(f"  {kind}", f"{n:,}") for kind, n in report.events_deleted.most_common()]
    rows += [(f"{table} rows {verb}", f"{n:,}") for table, n in sorted(report.rows_deleted.items())]
    files = report.log_files
    if files is not None:
        rows.append(("compute logs", files.note or f"{files.folders_deleted} folders, "
                                                   f"{human_bytes(files.bytes_deleted)}"))
    rows.append(("rows took (estimated)", human_bytes(report.estimated_bytes)))
    if not report.dry_run:
        before, after = sum(report.sizes_before.values()), sum(report.sizes_after.values())
        rows.append(("tables on disk", f"{human_bytes(before)} -> {human_bytes(after)} "
                                       "(freed space is reused by new rows)"))
        rows.append(("transactions", str(report.transactions)))
    rows.append(("took", f"{report.duration_s:.1f}s"))
    emit_table(rows)
    for note in report.notes:
        click.echo(f"Note: {note}")


def _backup_line(backup: dict) -> str:
    if not backup.get("name"):
        return "none (forced)" if backup.get("forced") else "none"
    text = f"{backup['name']}, {backup['age_h']:.1f} h old"
    if not backup.get("recent_enough"):
        text += f" (older than {backup['max_age_h']:g} h" + (", forced)" if backup.get(
            "forced") else ")")
    return text


@click.command("stats")
@dagster_home_option
@click.option("--exact", is_flag=True,
              help="Count every table's rows (slower) instead of PostgreSQL's estimates.")
@json_option
def stats(dagster_home, exact, as_json) -> None:
    """Show what the run history holds, how fast it grows and how long the disk lasts.

    Per table: rows and bytes on disk; events by type; events, runs and bytes written on each of
    the last 30 days; free space where the database (on this machine), the backups and the
    compute logs live, and the days until full at the current growth (what is written, before
    pruning frees space again). Reads only.

    \b
    Example:
      dagpg stats
      dagpg stats --json | jq .disk
    """
    inst = resolve_instance(dagster_home)
    report = history_stats(inst, load_settings(dagster_home=inst.home), exact=exact)
    if as_json:
        emit_json(report.as_dict())
        return
    click.echo(f"database: {human_bytes(report.database_bytes)}")
    _columns(("TABLE", "ROWS", "SIZE", "INDEXES"),
             [(f"{t.schema}.{t.name}", f"{'' if t.exact else '≈'}{t.rows:,}", human_bytes(t.total_bytes),
               human_bytes(t.index_bytes)) for t in report.tables if t.total_bytes > 16384])
    click.echo("")
    _columns(("EVENT TYPE", "EVENTS"),
             [(kind, f"{n:,}") for kind, n in report.events_by_type.items()])
    click.echo("")
    _columns(("DAY (UTC)", "EVENTS", "RUNS", "SIZE"),
             [(d.day.isoformat(), f"{d.events:,}", f"{d.runs:,}", human_bytes(d.bytes))
              for d in report.days if d.events or d.runs])
    click.echo(f"growth: {human_bytes(int(report.growth_bytes_per_day))} a day "
               "(last 7 days, before pruning)")
    click.echo("")
    rows = []
    for place in report.locations:
        if place.total_bytes is None:
            rows.append((place.role, str(place.path or "?"), "", "", place.note or ""))
            continue
        left = wording.days_left(place.days_left)
        shared = f"same disk as {', '.join(place.shares_with)}" if place.shares_with else ""
        rows.append((place.role, str(place.path),
                     f"{human_bytes(place.free_bytes)} ({place.free_pct:.0f}%)", left,
                     "; ".join(x for x in (shared, place.note or "") if x)))
    _columns(("DISK", "FOLDER", "FREE", "DAYS LEFT", "NOTE"), rows)


def _columns(header, rows) -> None:
    if not rows:
        return
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
