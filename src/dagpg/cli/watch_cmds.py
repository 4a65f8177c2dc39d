"""`dagpg watch`: the keeper, as a service (a loop) or for one pass."""

from __future__ import annotations

import json

import click

from dagpg.cli.options import dagster_home_option, json_option
from dagpg.settings import SERVICE_MANAGERS, load_settings
from dagpg.watch import watch as run_watch


@click.command("watch")
@click.option("--once", is_flag=True,
              help="One pass, then exit (e.g. from a scheduled task: set "
                   "dagpg.watch.interval_s to its period): exit code 0 when nothing is left "
                   "wrong, 1 otherwise.")
@click.option("--check", "check_only", is_flag=True,
              help="Only the startup checks (service manager, service names, permission, "
                   "password, log folder): print what it would watch and exit.")
@click.option("--service-manager", type=click.Choice(SERVICE_MANAGERS), default=None,
              help="How to restart services. Default: dagpg.watch.service_manager "
                   "(the rendered Servy and systemd services pass theirs).")
@dagster_home_option
@json_option
def watch(once, check_only, service_manager, dagster_home, as_json) -> None:
    """Keep the deployment running: restart a hung daemon or a silent webserver, end runs
    orphaned by a reboot.

    Every dagpg.watch.interval_s (30 s) it checks, with `dagpg verify`'s own checks, that every
    required daemon's heartbeat is younger than dagpg.watch.heartbeat_max_age_s (90 s) and that
    the webserver answers /server_info. A finding on dagpg.watch.failures_before_restart (2)
    passes in a row restarts that service through dagpg.watch.service_manager (servy, systemd
    or supervisord), at most max_restarts_per_hour (3) times an hour, then it gives up loudly.
    Runs STARTING, STARTED or CANCELING whose run worker is gone from this host are marked
    failed through Dagster, with an event saying why. Every finding and action is a JSON line
    in dagpg.watch.log_dir (reports/logs/watch.jsonl). Only one keeper acts at a time (a
    PostgreSQL advisory lock); another one waits.

    A configuration it cannot work with (unknown service manager or service, no permission to
    restart, no password) is one line and exit code 2.

    \b
    Example:
      dagpg watch --check
      dagpg watch
      dagpg watch --once --json
    """
    settings = load_settings(dagster_home=dagster_home)

    def on_start(lines):
        if not as_json:
            for line in lines:
                click.echo(line)

    def on_event(event):
        if as_json:
            click.echo(json.dumps(event.as_dict(), default=str))
        elif event.event != "startup":
            target = f" {event.target}:" if event.target else ""
            click.echo(f"{event.level.upper():<7} {event.event}{target} {event.detail}")

    last = run_watch(settings, dagster_home=dagster_home, once=once, check_only=check_only,
                     service_manager=service_manager, on_start=on_start, on_event=on_event)
    if once and last is not None and not last.ok:
        raise SystemExit(1)
