"""Options shared by every command, so a flag means the same thing everywhere."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import click

from dagpg.progress import ProgressFn

dagster_home_option = click.option(
    "--dagster-home",
    "dagster_home",
    metavar="DIR",
    default=None,
    help="The instance's folder (holding dagster.yaml). Default: $DAGSTER_HOME.",
)
json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print JSON for machines instead of text."
)
silent_option = click.option("--silent", is_flag=True, help="No progress output.")
yes_option = click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")


def progress_printer(silent: bool, as_json: bool) -> ProgressFn | None:
    """A progress callback writing to stderr, or None when asked to be quiet."""
    if silent or as_json:
        return None
    return lambda message: click.echo(f"… {message}", err=True)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


def emit_table(rows: Iterable[tuple[str, Any]]) -> None:
    rows = [(k, "" if v is None else str(v)) for k, v in rows]
    width = max((len(k) for k, _ in rows), default=0)
    for key, value in rows:
        click.echo(f"{key.ljust(width)}  {value}")
