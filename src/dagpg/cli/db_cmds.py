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
    silent_option,
)
from dagpg.instance import resolve_instance

data_dir_option = click.option(
    "--data-dir",
    metavar="DIR",
    default=None,
    help="Folder of the local cluster. Default: $DAGPG_PGDATA, else <DAGSTER_HOME>/postgres "
    "(as root, /var/lib/dagpg/<project>-<hash> when the server user cannot enter DAGSTER_HOME).",
)


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
        raise SystemExit(3)


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
    b, a = report.before, report.after
    emit_table([
        ("Dagster schema", _change(b.dagster_current, a.dagster_current, report.repaired)),
        ("dagpg schema", _change(b.kit_current, a.kit_current)),
        *(("repaired", line) for line in report.repaired),
    ])


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
