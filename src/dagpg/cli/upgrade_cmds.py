"""`dagpg upgrade --rehearse | --apply | --rollback`."""

from __future__ import annotations

import click

from dagpg.cli.options import (
    dagster_home_option,
    emit_json,
    emit_table,
    json_option,
    progress_printer,
    silent_option,
)
from dagpg.instance import resolve_instance
from dagpg.settings import load_settings


@click.command("upgrade")
@click.option("--rehearse", is_flag=True,
              help="Upgrade a copy (the newest verified backup, in a scratch database), time "
                   "it and check the history survived. Changes nothing.")
@click.option("--apply", "apply_", is_flag=True,
              help="Upgrade the instance: pre-upgrade backup, migration, verification.")
@click.option("--rollback", is_flag=True,
              help="Restore the pre-upgrade backup of the last upgrade.")
@dagster_home_option
@click.option("--dir", "directory", metavar="DIR", default=None,
              help="The backups folder. Default: dagpg.backup.directory in config/config.yml.")
@click.option("--backup", metavar="NAME", default=None,
              help="With --rollback: the pre-upgrade backup to restore (default: the last "
                   "applied upgrade's).")
@click.option("--force", is_flag=True,
              help="Go on although a daemon heart-beats (the services are already stopped).")
@json_option
@silent_option
def upgrade(rehearse, apply_, rollback, dagster_home, directory, backup, force, as_json,
            silent) -> None:
    """Upgrade the instance's schema to the installed Dagster: rehearse, apply, roll back.

    Run it after `pip install` of the new Dagster pins. --rehearse works on a copy while the
    services run. --apply refuses while the daemon heart-beats: stop both services first. A
    failed --apply leaves the database as it was (the schema migration runs in one
    transaction; anything failing after it restores the pre-upgrade backup).

    \b
    Example:
      pip install "dagster==1.13.27" "dagster-webserver==1.13.27" ... (the new pins)
      dagpg upgrade --rehearse
      dagpg upgrade --apply          # services stopped
      dagpg upgrade --rollback       # the way back; prints the pip install line
    """
    chosen = [m for m, on in (("rehearse", rehearse), ("apply", apply_),
                              ("rollback", rollback)) if on]
    if len(chosen) != 1:
        raise click.UsageError("choose one of --rehearse, --apply or --rollback")
    mode = chosen[0]
    if backup and mode != "rollback":
        raise click.UsageError("--backup goes with --rollback")
    from dagpg import upgrade as api  # imports alembic and the backup library

    inst = resolve_instance(dagster_home)
    settings = load_settings(dagster_home=inst.home)
    say = progress_printer(silent, as_json)
    if mode == "rehearse":
        report = api.rehearse_upgrade(inst, settings, directory=directory, progress=say)
        _render_rehearsal(report, as_json)
    elif mode == "apply":
        report = api.apply_upgrade(inst, settings, directory=directory, force=force,
                                   progress=say)
        _render_apply(report, as_json)
    else:
        report = api.rollback_upgrade(inst, settings, directory=directory, backup=backup,
                                      force=force, progress=say)
        _render_rollback(report, as_json)


def _render_rehearsal(report, as_json: bool) -> None:
    if as_json:
        emit_json(report.as_dict())
    else:
        m = report.migration
        emit_table([
            ("rehearsed on", f"backup {report.backup} (taken {report.backup_taken_at} with "
                             f"Dagster {report.backup_dagster})"),
            ("schema", f"{m.before or 'nothing'} -> {m.after}" if report.changed
             else f"{m.after} (already at head: no change)"),
            *[("  step", str(s)) for s in report.steps],
            ("migration took", f"{m.duration_s:.2f}s (schema {m.schema_s:.2f}s, data "
                               f"{m.data_s:.2f}s)"),
            ("rehearsal took", f"{report.duration_s:.1f}s (restore {report.restore_s:.1f}s, "
                               f"checks {report.verify_s:.1f}s)"),
            ("--apply will take", f"about {report.estimate_s:.0f}s (backup "
                                  f"{report.backup_s:.1f}s, migration {m.duration_s:.1f}s, "
                                  f"checks {report.verify_s:.1f}s)"),
            ("history", _counts(report.counts)),
            ("checks", "every one equal after the migration" if report.ok
             else f"{len(report.differences)} differences"),
            *[("  differs", d) for d in report.differences[:20]],
            *[("note", n) for n in report.notes],
        ])
    if not report.ok:
        raise SystemExit(1)


def _render_apply(report, as_json: bool) -> None:
    if as_json:
        emit_json(report.as_dict())
        return
    m = report.migration
    rows = [("status", report.status)]
    if m is not None:
        rows += [("schema", f"{m.before} -> {m.after}"),
                 *[("  step", str(s)) for s in report.steps],
                 ("pre-upgrade backup", report.backup),
                 ("took", f"{report.duration_s:.1f}s (backup {report.backup_s:.1f}s, migration "
                          f"{m.duration_s:.1f}s, checks {report.verify_s:.1f}s)"),
                 ("history", _counts(report.counts) + ": every check equal")]
    rows += [("next", step) for step in report.next_steps]
    emit_table(rows)


def _render_rollback(report, as_json: bool) -> None:
    if as_json:
        emit_json(report.as_dict())
        return
    emit_table([
        ("restored", f"{report.restored} (Dagster schema {report.revision})"),
        ("rows", report.rows),
        ("safety backup", report.safety_backup or "none"),
        ("took", f"{report.duration_s:.1f}s"),
        *[("next", step) for step in report.next_steps],
    ])
    if report.versions:
        click.echo(report.versions.pip_line())


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {what}" for what, n in counts.items())
