"""`dagpg nightly`: the nightly step (backup, backups' retention, history prune) for the OS task."""

from __future__ import annotations

import click

from dagpg.backup.create import human_bytes
from dagpg.cli.options import (
    dagster_home_option,
    emit_json,
    json_option,
    progress_printer,
    silent_option,
)
from dagpg.errors import EXIT_FAILURE
from dagpg.instance import resolve_instance
from dagpg.nightly import run_nightly
from dagpg.settings import load_settings
from dagpg.wording import count


@click.command("nightly")
@dagster_home_option
@click.option("--backup-if-older-than", "backup_if_older_than", metavar="HOURS",
              type=click.FloatRange(min=0, min_open=True), default=None,
              help="Back up only when the newest backup is older than HOURS (and none is "
                   "running), e.g. because Dagster's instance_backup_nightly did not run.")
@json_option
@silent_option
def nightly(dagster_home, backup_if_older_than, as_json, silent) -> None:
    """Run the nightly step: back up, delete backups outside retention, prune the history.

    The same library call as Dagster's instance_backup_nightly, for the OS task that stands in
    for it when the daemon is down. The history prune (dagpg.retention) follows the backup, so
    it always has a fresh undo; it is skipped when dagpg.retention.nightly is false or another
    prune is running. Never prompts; exit code 0 only when every step was done.

    \b
    Example:
      dagpg nightly --backup-if-older-than 12 --json
    """
    inst = resolve_instance(dagster_home)
    settings = load_settings(dagster_home=inst.home)
    report = run_nightly(inst, settings, backup_if_older_than_h=backup_if_older_than,
                         kind="nightly", progress=progress_printer(silent, as_json))
    if as_json:
        emit_json(report.as_dict())
    else:
        for step in report.steps:
            click.echo(_line(step))
    if not report.complete:
        raise click.exceptions.Exit(EXIT_FAILURE)


def _line(step) -> str:
    if step.name == "backup":
        done = (f"backup {step.backup.name} ({human_bytes(step.backup.size_bytes)})"
                if step.backup else f"backup skipped: {step.skipped}")
        pruned = len(step.backups_pruned.deleted) if step.backups_pruned else 0
        return f"{done}; {count(pruned, 'old backup')} deleted"
    if step.history is None:
        return f"history prune skipped: {step.skipped}"
    h = step.history
    return (f"history: {count(h.runs_deleted, 'run')} deleted, logs of "
            f"{count(h.runs_logs_pruned, 'run')} pruned, {count(h.events_total, 'event')} "
            f"deleted ({h.duration_s:.1f}s)")

