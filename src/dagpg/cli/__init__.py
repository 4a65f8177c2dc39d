"""`dagpg`: the operations kit for a PostgreSQL-backed Dagster instance.

Commands are thin: parse options, call one library function, render what it returns. Errors
raised by the library (DagpgError) become one line on stderr and an exit code here, in one place.
"""

from __future__ import annotations

import gc
import logging
import sys

import click

from dagpg import __version__
from dagpg.cli import config_cmds, db_cmds, instance_cmds, render_cmds, verify_cmds, watch_cmds
from dagpg.cli.backup_cmds import backup, backups, restore
from dagpg.cli.migrate_cmds import migrate_from_sqlite
from dagpg.cli.nightly_cmds import nightly
from dagpg.cli.prune_cmds import prune, stats
from dagpg.cli.upgrade_cmds import upgrade
from dagpg.errors import ConnectionLostError, DagpgError
from dagpg.pg import lost_connection_reason


class DagpgGroup(click.Group):
    """Turns DagpgError into `Error: ...` and its exit code, unless --traceback is given; so
    too a lost database connection that reached here unconverted (from Dagster's code, say)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except DagpgError as exc:
            if (ctx.obj or {}).get("traceback"):
                raise
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except Exception as exc:
            reason = lost_connection_reason(exc)
            if reason is None or (ctx.obj or {}).get("traceback"):
                raise
            error = ConnectionLostError("", reason)
            click.echo(f"Error: {error}", err=True)
            ctx.exit(error.exit_code)


@click.group(cls=DagpgGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dagpg")
@click.option("--traceback", is_flag=True, help="Show the full traceback of an error.")
@click.option("-v", "--verbose", is_flag=True, help="Log what dagpg does to stderr.")
@click.pass_context
def cli(ctx: click.Context, traceback: bool, verbose: bool) -> None:
    """Operate a PostgreSQL-backed Dagster instance: local database, schemas, instance checks.

    Every command reads the instance from DAGSTER_HOME (or --dagster-home) and the password
    from the environment variable its dagster.yaml names (DAGSTER_PG_PASSWORD).

    \b
    Example:
      export DAGSTER_HOME=$PWD/dagster_home DAGSTER_PG_PASSWORD=...
      dagpg db up && dagpg db upgrade && dagpg instance show
    """
    ctx.ensure_object(dict)["traceback"] = traceback
    if verbose:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(levelname)s %(name)s: %(message)s")
    else:
        _warnings_to_stderr()


class _KitWarnings(logging.StreamHandler):
    """The kit's own warnings on stderr, one line each; not Dagster's (its connection retries
    and notices: the kit reports the outcome once, as an error)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self.setLevel(logging.WARNING)
        self.addFilter(lambda record: record.name.split(".")[0] == "dagpg")
        self.setFormatter(logging.Formatter("warning: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr  # the current one (tests swap it)
        super().emit(record)


def _warnings_to_stderr() -> None:
    root = logging.getLogger()
    if not any(isinstance(h, _KitWarnings) for h in root.handlers):
        root.addHandler(_KitWarnings())


cli.add_command(instance_cmds.instance)
cli.add_command(db_cmds.db)
cli.add_command(config_cmds.config)
cli.add_command(render_cmds.render)
cli.add_command(verify_cmds.verify)
cli.add_command(watch_cmds.watch)
cli.add_command(backup)
cli.add_command(backups)
cli.add_command(restore)
cli.add_command(migrate_from_sqlite)
cli.add_command(upgrade)
cli.add_command(prune)
cli.add_command(stats)
cli.add_command(nightly)


def main() -> None:
    try:
        cli(prog_name="dagpg")
    finally:
        # Dagster's import leaves about a million objects, and the interpreter's collections at
        # exit scan them all (~0.4 s, measured): collect garbage once, freeze the rest, exit.
        gc.collect()
        gc.freeze()
