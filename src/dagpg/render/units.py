"""The deployment's services, listed once: what each runs, in what order they start. Servy
(`servy.py`) and systemd (`systemd.py`) render this same list, so a service added here appears
in both.

Start order: the webserver, the daemon, then the keeper (`dagpg watch`), which restarts the
other two. The keeper never *depends* on them: Servy's restart (ServiceController.Stop) and
systemd's Requires= would stop or restart the keeper with the service it restarts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from dagpg.settings import KitSettings

WEBSERVER, DAEMON, KEEPER = "webserver", "daemon", "keeper"


@dataclass(frozen=True)
class Unit:
    role: str
    name: str  # the Servy service, the systemd unit, the supervisord program
    display_name: str
    description: str
    program: str  # an executable of the project's Python environment
    args: tuple[str, ...]
    log_stem: str
    depends_on: tuple[str, ...] = ()  # names it needs running (Servy ServiceDependencies)
    starts_after: tuple[str, ...] = ()  # names started before it (order only)
    runs_as_admin: bool = False  # restarts services: LocalSystem / root
    start_delayed: bool = False  # at boot, after the automatic services (Servy)


def units(settings: KitSettings, *, workspace: str, quote: Callable[[str], str],
          service_manager: str) -> list[Unit]:
    """The services, in start order. `workspace`: the workspace.yaml path as the server spells
    it; `quote` quotes a path for the renderer's command line; `service_manager`: how the
    keeper on that server restarts services."""
    names, web = settings.services, settings.webserver
    prefix = web.path_prefix.rstrip("/")
    web_args = ("-w", quote(workspace), "-h", web.host, "-p", str(web.port),
                *(("--path-prefix", prefix) if prefix else ()))
    return [
        Unit(WEBSERVER, names.webserver, "Dagster Webserver",
             "Dagster web UI for the ArcPy orchestration project "
             f"({web.host} only; published by the reverse proxy).",
             "dagster-webserver", web_args, "dagster_webserver"),
        Unit(DAEMON, names.daemon, "Dagster Daemon",
             "Dagster schedule and sensor daemon for the ArcPy orchestration project.",
             "dagster-daemon", ("run", "-w", quote(workspace)), "dagster_daemon",
             depends_on=(names.webserver,), starts_after=(names.webserver,)),
        Unit(KEEPER, names.keeper, "Dagster Keeper",
             "dagpg watch: restarts a hung Dagster daemon or a silent webserver, ends runs "
             "orphaned by a reboot.",
             "dagpg", ("watch", "--service-manager", service_manager), "dagpg_watch",
             starts_after=(names.webserver, names.daemon), runs_as_admin=True,
             start_delayed=True),
    ]
