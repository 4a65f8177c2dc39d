"""`dagpg render`: the Windows (and nginx) deployment files, from config.yml."""

from __future__ import annotations

import click

from dagpg.cli.options import (
    dagster_home_option,
    emit_json,
    emit_table,
    json_option,
)
from dagpg.render.bundle import KINDS
from dagpg.render.bundle import render as render_files
from dagpg.settings import load_settings


@click.command("render")
@click.argument("what", type=click.Choice([*KINDS, "all"]), metavar="servy|iis|nginx|task|systemd|all")
@click.option("--out", "out_dir", required=True, metavar="DIR",
              help="Folder to write into (created if needed); files go to DIR/<what>/.")
@click.option("--config", "config_path", metavar="FILE", default=None,
              help="The config.yml to read. Default: $DAGPG_CONFIG, else config/config.yml "
                   "beside DAGSTER_HOME's folder, else ./config/config.yml.")
@click.option("--listen", default="80", show_default=True, metavar="[ADDR:]PORT",
              help="nginx only: where nginx listens.")
@click.option("--server-name", default="_", show_default=True, metavar="NAMES",
              help="nginx only: its server_name.")
@dagster_home_option
@json_option
def render(what, out_dir, config_path, listen, server_name, dagster_home, as_json) -> None:
    """Render deployment files from config.yml (dagpg.windows, dagpg.webserver, dagpg.access,
    dagpg.services, dagpg.systemd).

    servy: one Servy service file per service (import with `servy-cli import`); iis: web.config
    with the reverse-proxy rules, Windows authentication and URL Authorization, and
    iis_setup.ps1 (appcmd); nginx: the same proxy for Linux, with Basic authentication against
    dagpg.access.htpasswd (in `all` only when that is set, or access control is off); task: the
    nightly step (`dagpg nightly`) as a Task Scheduler task; systemd: the webservers, the daemon
    and the keeper as systemd units (Linux). No file ever holds a password.

    \b
    Example:
      PROJECT_ENV=prod dagpg render all --out deploy
      servy-cli import --config=xml --path=deploy\\servy\\DagsterWebserver.xml --install
    """
    settings = load_settings(config_path, dagster_home=dagster_home)
    written = render_files(settings, out_dir, what, listen=listen, server_name=server_name)
    if as_json:
        emit_json([{"kind": r.kind, "path": str(r.path), "bytes": r.size} for r in written])
        return
    emit_table([(r.kind, r.path) for r in written])
