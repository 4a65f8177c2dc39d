"""`dagpg backup`, `dagpg restore` and `dagpg backups list|verify|prune`."""

from __future__ import annotations

from collections.abc import Sequence

import click

from dagpg import backup as api
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
from dagpg.instance import resolve_instance
from dagpg.settings import load_settings
from dagpg.wording import count

dir_option = click.option(
    "--dir", "directory", metavar="DIR", default=None,
    help="The backups folder. Default: dagpg.backup.directory in config/config.yml.",
)


class _BackupCommand(click.Command):
    """`dagpg backup list` is an easy slip for `dagpg backups list`: say which was meant."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] in backups.commands:
            raise click.UsageError(
                f"No such command {args[0]!r} for `{ctx.command_path}`. Did you mean "
                f"`{ctx.command_path}s {' '.join(args)}`?", ctx)
        return super().parse_args(ctx, args)


@click.command("backup", cls=_BackupCommand)
@dagster_home_option
@click.option("--dest", metavar="DIR", default=None,
              help="Folder to write the backup into. Default: dagpg.backup.directory in "
                   "config/config.yml.")
@click.option("--if-older-than", "if_older_than", metavar="HOURS", type=float, default=None,
              help="Only when the newest backup is older than HOURS (and none is running); "
                   "otherwise do nothing and exit 0.")
@json_option
@silent_option
def backup(dagster_home, dest, if_older_than, as_json, silent) -> None:
    """Back up the instance: database, compute logs, dagster.yaml and workspace.yaml.

    Writes one folder named by its UTC start time (e.g. 20261124T013000Z) with a manifest.json
    of SHA-256 checksums, sizes, versions and row counts. The folder gets its name only once it
    is complete and verified; a failed backup leaves nothing that looks like one. Never prompts:
    safe to schedule (exit code 0 only on success).

    With --if-older-than, a scheduled task backs up only when the Dagster schedule
    (instance_backup_nightly) did not, e.g. because the daemon was down.

    \b
    Example:
      dagpg backup --json
      dagpg backup --if-older-than 20 && dagpg backups prune
    """
    inst = resolve_instance(dagster_home)
    settings = load_settings(dagster_home=inst.home)
    progress = progress_printer(silent, as_json)
    if if_older_than is None:
        result = api.create_backup(inst, settings, directory=dest, progress=progress)
    else:
        result = api.backup_if_due(inst, settings, older_than_h=if_older_than, directory=dest,
                                   progress=progress)
    if as_json:
        emit_json(result.as_dict())
        return
    if isinstance(result, api.BackupSkipped):
        click.echo(f"skipped: {result.reason}")
        return
    counts = result.row_counts
    emit_table([
        ("backup", result.name),
        ("folder", result.path),
        ("size", human_bytes(result.size_bytes)),
        ("took", f"{result.duration_s:.1f}s"),
        ("rows", f"{count(counts.get('runs', 0), 'run')}, "
                 f"{count(counts.get('event_logs', 0), 'event')}, "
                 f"{sum(counts.values()):,} in {count(len(counts), 'table')}"),
        ("dump SHA-256", result.dump_sha256),
        ("catalogued", "yes" if result.catalogued else "no (run `dagpg db upgrade`)"),
    ])


@click.command("restore")
@click.argument("name")
@dagster_home_option
@dir_option
@yes_option
@click.option("--force", is_flag=True,
              help="Restore even though the daemon heart-beats (services still running).")
@json_option
@silent_option
def restore(name, dagster_home, directory, yes, force, as_json, silent) -> None:
    """Restore backup NAME over the instance: database and compute logs.

    NAME is a backup's name, `latest`, or a backup folder's path. Checks the backup's checksums, refuses while the daemon heart-beats (stop both services
    first), takes a safety backup of what is there now (when there is anything to save), then
    loads the dump in one transaction that also checks every table's row count against the
    manifest: it all lands or nothing changes. Then the compute logs are swapped in. Works over
    an existing instance and into an empty database (after `createdb`, or `dagpg db up`).

    \b
    Example:
      dagpg backups list
      dagpg restore 20261124T013000Z --yes
    """
    inst = resolve_instance(dagster_home)
    settings = load_settings(dagster_home=inst.home)
    if not yes:
        click.confirm(f"Replace the database {inst.target.where} and the compute logs with "
                      f"backup {name}?", abort=True)
    report = api.restore_backup(inst, settings, name, directory=directory, force=force,
                                progress=progress_printer(silent, as_json))
    if as_json:
        emit_json(report.as_dict())
        return
    emit_table([
        ("restored", report.name),
        ("rows", f"{report.rows} in {report.tables} tables, as in the manifest"),
        ("compute logs", f"{report.compute_logs_files} files"),
        ("safety backup", report.safety_backup or "none (there was nothing to save)"),
        ("took", f"{report.duration_s:.1f}s"),
    ])
    for note in report.notes:
        click.echo(f"Note: {note}")


@click.group("backups")
def backups() -> None:
    """List, verify and prune the instance's backups."""


@backups.command("list")
@dagster_home_option
@dir_option
@json_option
def list_(dagster_home, directory, as_json) -> None:
    """List the backups, oldest first, with their verification results.

    Failed attempts the catalog remembers are listed too (state `failed`). Works while the
    database is down, without verification results.

    \b
    Example:
      dagpg backups list --json
    """
    inst = resolve_instance(dagster_home, require_password=False)
    settings = load_settings(dagster_home=inst.home)
    result = api.list_backups(inst, settings, directory=directory)
    if as_json:
        emit_json(result.as_dict())
        return
    rows = [(b.name, b.state, b.kind or "", _when(b.finished_at or b.taken_at),
             human_bytes(b.size_bytes) if b.size_bytes is not None else "",
             b.verified, _when(b.restore_tested_at) or "", b.detail or "")
            for b in result.backups]
    click.echo(f"{len(rows)} {'backup' if len(rows) == 1 else 'backups'} in {result.directory}")
    if rows:
        _columns(("NAME", "STATE", "KIND", "FINISHED (UTC)", "SIZE", "VERIFIED",
                  "RESTORE-TESTED", "DETAIL"), rows)
    if result.catalog_note:
        click.echo(f"Note: {result.catalog_note}")


@backups.command("verify")
@click.argument("name")
@dagster_home_option
@dir_option
@click.option("--restore-test", is_flag=True,
              help="Also restore into a scratch database, compare every table's row count "
                   "with the manifest, then drop it.")
@json_option
@silent_option
def verify(name, dagster_home, directory, restore_test, as_json, silent) -> None:
    """Verify backup NAME: checksums, pg_restore --list, optionally a test restore.

    NAME is a backup's name, `latest`, or a backup folder's path. Exit code 1 when the backup
    is damaged. The result is recorded in the catalog, where
    `dagpg backups prune` and `dagpg backups list` find it.

    \b
    Example:
      dagpg backups verify latest --restore-test
    """
    inst = resolve_instance(dagster_home)
    settings = load_settings(dagster_home=inst.home)
    report = api.verify_backup(inst, settings, name, directory=directory,
                               restore_test=restore_test,
                               progress=progress_printer(silent, as_json))
    if as_json:
        emit_json(report.as_dict())
        return
    click.echo(f"{report.name}: OK ({report.duration_s:.1f}s)")
    for check in report.checks:
        click.echo(f"  ✓ {check}")


@backups.command("prune")
@dagster_home_option
@dir_option
@click.option("--dry-run", is_flag=True, help="Show what would be deleted; delete nothing.")
@json_option
def prune(dagster_home, directory, dry_run, as_json) -> None:
    """Delete the backups outside retention (dagpg.backup.keep_daily and keep_weekly).

    Keeps the newest backup of each of the last keep_daily days and of each of the last
    keep_weekly weeks (days and weeks in dagpg.backup.schedule.timezone), and always the newest
    backup that verified. Also removes leftovers of interrupted backups. Never prompts: safe to
    schedule right after `dagpg backup`.

    \b
    Example:
      dagpg backups prune --dry-run
    """
    inst = resolve_instance(dagster_home)
    settings = load_settings(dagster_home=inst.home)
    report = api.prune_backups(inst, settings, directory=directory, dry_run=dry_run)
    if as_json:
        emit_json(report.as_dict())
        return
    verb = "would delete" if dry_run else "deleted"
    for name, reasons in sorted(report.kept.items()):
        click.echo(f"{'keep':<7} {name}  ({', '.join(reasons)})")
    for name in report.deleted:
        click.echo(f"{'delete' if dry_run else 'deleted':<7} {name}")
    click.echo(f"{len(report.kept)} kept, {len(report.deleted)} {verb} in {report.directory}")


def _when(value) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else ""


def _columns(header: Sequence[str], rows: list[Sequence[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())

