"""`dagpg instance ...`: what a DAGSTER_HOME resolves to."""

from __future__ import annotations

import click

from dagpg.cli.options import dagster_home_option, emit_json, emit_table, json_option
from dagpg.instance import resolve_instance


@click.group()
def instance() -> None:
    """Inspect the Dagster instance that DAGSTER_HOME points at."""


@instance.command("show")
@dagster_home_option
@json_option
def show(dagster_home: str | None, as_json: bool) -> None:
    """Show the PostgreSQL target of the instance, password redacted.

    Reads dagster.yaml without starting Dagster and checks that the password's environment
    variable is set (its value is never shown).

    \b
    Example:
      DAGSTER_HOME=dagster_home dagpg instance show --json
    """
    resolved = resolve_instance(dagster_home)
    if as_json:
        emit_json(resolved.as_dict())
        return
    t = resolved.target
    emit_table([
        ("DAGSTER_HOME", resolved.home),
        ("dagster.yaml", resolved.yaml_path),
        ("storage", resolved.storage_key),
        ("host", t.host),
        ("port", t.port),
        ("database", t.database),
        ("user", t.user),
        ("password", _describe_source(t.password_source)),
        ("driver scheme", t.scheme),
        ("url", t.url()),
        ("compute logs", resolved.compute_logs_dir),
    ])


def _describe_source(source: str) -> str:
    if source.startswith("env:"):
        return f"from environment variable {source[4:]} (set)"
    if source == "literal":
        return "written in dagster.yaml (move it to DAGSTER_PG_PASSWORD)"
    return "none"
