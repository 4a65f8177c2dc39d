"""`dagpg db ...`: the project-local PostgreSQL server and the schemas."""

from __future__ import annotations

import click

from dagpg import localdb, schema
from dagpg.cli.options import (
    dagster_home_option,
    emit_json,
    emit_table,
    json_option,
    progress_printer,
)
from dagpg.errors import EXIT_NOT_RUNNING
from dagpg.instance import resolve_instance

data_dir_option = click.option(
    "--data-dir",
    metavar="DIR",
    default=None,
    help="Folder of the local cluster. Default: $DAGPG_PGDATA, else <DAGSTER_HOME>/postgres "
    "(as root, /var/lib/dagpg/<project>-<hash> when the server user cannot enter DAGSTER_HOME).",
)


# A server's state is the whole result of up, down and upgrade: with --silent they print nothing
# (the exit code tells), which is what a script calling them wants.
silent_option = click.option("--silent", is_flag=True,
                             help="Print nothing unless it fails (the exit code tells).")


@click.group()
def db() -> None:
    """Run a local PostgreSQL for the instance and manage its schemas."""


@db.command("up")
@dagster_home_option
@data_dir_option
@json_option
@silent_option
def up(dagster_home, data_dir, as_json, silent) -> None:
    """Start a project-local PostgreSQL serving what dagster.yaml names.

    Creates the cluster on first use (127.0.0.1 only, scram-sha-256), then the role and the
    database from dagster.yaml, with DAGSTER_PG_PASSWORD as the role's password. Running it
    again changes nothing; a changed DAGSTER_PG_PASSWORD becomes the role's new password.

    \b
    Example:
      export DAGSTER_HOME=$PWD/dagster_home DAGSTER_PG_PASSWORD=choose-one
      dagpg db up
    """
    inst = resolve_instance(dagster_home)
    status = localdb.up_for_instance(inst, data_dir, progress_printer(silent, as_json))
    if not silent or as_json:
        _render_status(status, inst.target.url(), as_json)


@db.command("down")
@dagster_home_option
@data_dir_option
@json_option
@silent_option
def down(dagster_home, data_dir, as_json, silent) -> None:
    """Stop the project-local PostgreSQL (its data stays).

    \b
    Example:
      dagpg db down
    """
    inst = resolve_instance(dagster_home, require_password=False)
    status = localdb.cluster_for(inst, data_dir).down(progress_printer(silent, as_json))
    if not silent or as_json:
        _render_status(status, inst.target.url(), as_json)


@db.command("status")
@dagster_home_option
@data_dir_option
@json_option
def status(dagster_home, data_dir, as_json) -> None:
    """Show whether the project-local PostgreSQL runs. Exit code 3 when it does not.

    \b
    Example:
      dagpg db status --json
    """
    inst = resolve_instance(dagster_home, require_password=False)
    result = localdb.cluster_for(inst, data_dir).status()
    _render_status(result, inst.target.url(), as_json)
    if not result.running:
        raise SystemExit(EXIT_NOT_RUNNING)


@db.command("url")
@dagster_home_option
def url(dagster_home) -> None:
    """Print the instance's libpq URL, without the password.

    \b
    Example:
      PGPASSWORD="$DAGSTER_PG_PASSWORD" psql "$(dagpg db url)"
    """
    inst = resolve_instance(dagster_home, require_password=False)
    click.echo(inst.target.url(redact=False))


@db.command("upgrade")
@dagster_home_option
@json_option
@silent_option
def upgrade(dagster_home, as_json, silent) -> None:
    """Bring Dagster's schema and the kit's (schema `dagpg`) to head.

    Dagster's tables are created or migrated the way `dagster instance migrate` does; the kit's
    tables by alembic, with their own version table. Running it twice changes nothing. A Dagster
    schema whose creation was interrupted (stamped at head, tables or data migrations missing,
    compared with Dagster's models) is rebuilt while it holds no history, completed otherwise.

    \b
    Example:
      dagpg db upgrade
    """
    inst = resolve_instance(dagster_home)
    report = schema.upgrade(inst, progress_printer(silent, as_json))
    if as_json:
        emit_json(report.as_dict())
        return
    if silent:
        return
    b, a = report.before, report.after
    emit_table([
        ("Dagster schema", _change(b.dagster_current, a.dagster_current, report.repaired)),
        ("dagpg schema", _change(b.kit_current, a.kit_current)),
        *(("repaired", line) for line in report.repaired),
    ])


@db.command("move")
@dagster_home_option
@click.option("--to-dagster-home", "to_home", metavar="DIR", required=True,
              help="The DAGSTER_HOME whose dagster.yaml names the new (empty) database.")
@click.option("--dir", "directory", metavar="DIR", default=None,
              help="The backups folder (a verified backup must exist; the dump is written "
                   "there while it runs). Default: dagpg.backup.directory in config/config.yml.")
@click.option("--force", is_flag=True,
              help="Go on although a daemon heart-beats (the services are already stopped).")
@json_option
@silent_option
def move(dagster_home, to_home, directory, force, as_json, silent) -> None:
    """Copy the instance into the database another dagster.yaml names (a new server).

    Uses pg_dump/pg_restore of the newer server's major version, loads in one transaction,
    compares every table's row count and every sequence's position, and opens the copy with
    Dagster (same instance id). The source is only read. Refuses while the daemon heart-beats,
    without a verified backup, into an older server or a database that is not empty. Then
    prints what to change in dagster.yaml.

    \b
    Example:
      createdb -h new-server -O dagster dagster      # the new, empty database
      dagpg db move --to-dagster-home /srv/new_home  # its dagster.yaml names it
    """
    from dagpg.settings import load_settings
    from dagpg.upgrade.move import move_database

    inst = resolve_instance(dagster_home)
    other = resolve_instance(to_home)
    report = move_database(inst, other, load_settings(dagster_home=inst.home),
                           directory=directory, force=force,
                           progress=progress_printer(silent, as_json))
    if as_json:
        emit_json(report.as_dict())
        return
    emit_table([
        ("copied", f"{report.source} (PostgreSQL {report.source_server}) -> {report.target} "
                   f"(PostgreSQL {report.target_server}) with {report.tools}"),
        ("compared", f"{report.tables} tables ({report.rows} rows), {report.sequences} "
                     "sequences: no differences"),
        ("Dagster", f"opens the copy: instance id {report.instance_id or '(none yet)'}, schema "
                    f"{report.dagster_revision}"),
        ("took", f"{report.duration_s:.1f}s (dump {report.dump_s:.1f}s, load "
                 f"{report.load_s:.1f}s, checks {report.check_s:.1f}s)"),
        ("source", "untouched"),
    ])
    click.echo(f"\nTo switch, stop the services and change in {report.yaml_path}:")
    for key, old, new in report.yaml_changes:
        click.echo(f"  {key}: {old} -> {new}")
    click.echo("then start the services and run `dagpg verify`.")


def _change(before: str | None, after: str | None, repaired: list[str] = ()) -> str:
    if before == after:
        return f"{after} ({'repaired' if repaired else 'already at head'})"
    return f"{before or 'empty'} -> {after}"


def _render_status(status: localdb.ClusterStatus, url: str, as_json: bool) -> None:
    if as_json:
        emit_json({**status.as_dict(), "url": url})
        return
    state = "running" if status.running else ("stopped" if status.initialized else "not created")
    emit_table([
        ("server", state),
        ("listening", f"{status.host}:{status.port}" if status.running else None),
        ("version", status.version),
        ("pid", status.pid),
        ("data", status.root / "data"),
        ("runs as", status.os_user),
        ("url", url),
    ])
