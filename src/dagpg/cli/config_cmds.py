"""`dagpg config show`: the kit's settings as this process sees them."""

from __future__ import annotations

import click

from dagpg.cli.options import dagster_home_option, emit_json, emit_table, json_option
from dagpg.settings import load_settings


@click.group()
def config() -> None:
    """Inspect the kit's settings (the `dagpg:` section of config/config.yml)."""


@config.command("show")
@dagster_home_option
@json_option
def show(dagster_home, as_json) -> None:
    """Show the kit's settings with PROJECT_ENV applied, and the file they came from.

    The file is $DAGPG_CONFIG, else config/config.yml beside DAGSTER_HOME's folder, else
    ./config/config.yml; without one, the defaults apply.

    \b
    Example:
      PROJECT_ENV=prod dagpg config show --json
    """
    settings = load_settings(dagster_home=dagster_home)
    source = str(settings.path) if settings.path else "defaults (no config file found)"
    if as_json:
        emit_json({"file": source, "env": settings.env, "settings": settings.model_dump()})
        return
    rows = [("file", source), ("PROJECT_ENV", settings.env)]
    for section, values in settings.model_dump().items():
        rows.extend(_flatten(section, values))
    emit_table(rows)


def _flatten(prefix: str, value) -> list[tuple[str, object]]:
    if isinstance(value, dict):
        return [row for k, v in value.items() for row in _flatten(f"{prefix}.{k}", v)]
    return [(prefix, value)]
