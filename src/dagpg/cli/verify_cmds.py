"""`dagpg verify`: do the webserver and the daemon share one healthy instance?"""

from __future__ import annotations

import click

from dagpg.cli.options import dagster_home_option, emit_json, json_option
from dagpg.settings import load_settings
from dagpg.verify.full import verify_full


@click.command("verify")
@click.option("--webserver-url", metavar="URL", default=None,
              help="The webserver as the server itself reaches it. Default: its Servy "
                   "config's -h/-p/--path-prefix, else http://<host>:<port><path_prefix> "
                   "from dagpg.webserver in config.yml.")
@click.option("--public-url", metavar="URL", default=None,
              help="The UI as users reach it, through the reverse proxy (IIS), path prefix "
                   "included, e.g. https://host/dagster.")
@click.option("--public-user", metavar="NAME", default=None,
              help="Log in to the proxy as NAME (HTTP Basic, e.g. nginx's htpasswd) for the "
                   "checks through --public-url; the password comes from DAGPG_PUBLIC_PASSWORD.")
@click.option("--servy-config", "servy_configs", metavar="FILE", multiple=True,
              type=click.Path(exists=True, dir_okay=False),
              help="A service's exported Servy config (repeat for both services); its "
                   "DAGSTER_HOME and environment are checked. Default: the current environment.")
@click.option("--max-heartbeat-age", "heartbeat_max_age_s", metavar="SECONDS", type=float,
              default=None, help="Oldest acceptable daemon heartbeat. Default: "
                                 "dagpg.verify.heartbeat_max_age_s (120).")
@click.option("--max-backup-age", "backup_max_age_h", metavar="HOURS", type=float,
              default=None, help="Oldest acceptable newest backup. Default: "
                                 "dagpg.verify.backup_max_age_h (26).")
@click.option("--wait", "wait_s", metavar="SECONDS", type=float, default=0.0,
              help="While the daemon has no fresh heartbeats or a webserver does not answer "
                   "(they were just started), check again every 5 s for up to SECONDS. "
                   "Default: 0, judge at once.")
@dagster_home_option
@json_option
def verify(webserver_url, public_url, public_user, servy_configs, heartbeat_max_age_s,
           backup_max_age_h, wait_s, dagster_home, as_json) -> None:
    """Check that the webserver and the daemon share one healthy instance.

    Checks: both services resolve to the same PostgreSQL database; it answers and both schemas
    are at head; every daemon Dagster requires has a fresh heartbeat; the webserver (and the
    public URL, WebSocket included) serves the database's instance id and its heartbeat times;
    the definitions load; the schedules run; the newest backup is recent; the disks have room;
    where the services' Python has arcpy, it imports with an ArcGIS license (dagpg.arcpy). With
    --public-url also: anonymous requests to the viewers' and the operators' paths are refused,
    the viewers' webserver grants no permission, the operators' webserver answers and serves
    the same instance, and no webserver port answers beyond loopback.

    Exit code 0 when no check failed (warnings and skipped checks pass), 1 when one failed,
    2 for a usage or configuration error.

    \b
    Example:
      dagpg verify
      dagpg verify --public-url https://gis-server/dagster --json
      DAGPG_PUBLIC_PASSWORD=... dagpg verify --public-url https://host/dagster --public-user ops
      dagpg verify --servy-config DagsterWebserver.xml --servy-config DagsterDaemon.xml
      dagpg verify --wait 180    # right after starting the services
    """
    settings = load_settings(dagster_home=dagster_home)
    report = verify_full(
        settings,
        wait_s=wait_s,
        progress=lambda line: click.echo(line, err=True),
        dagster_home=dagster_home,
        webserver_url=webserver_url,
        public_url=public_url,
        servy_configs=servy_configs,
        public_user=public_user,
        heartbeat_max_age_s=heartbeat_max_age_s,
        backup_max_age_h=backup_max_age_h,
    )
    if as_json:
        emit_json(report.as_dict())
    else:
        for line in report.lines():
            click.echo(line)
    if report.exit_code:
        raise SystemExit(report.exit_code)
