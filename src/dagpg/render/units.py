"""The deployment's services, listed once: what each runs, in what order they start. Servy
(`servy.py`) and systemd (`systemd.py`) render this same list, so a service added here appears
in both.

Start order: the webservers (with dagpg.access the operators' full one and the viewers'
read-only one), the daemon, then the keeper (`dagpg watch`), which restarts the others. No
service *depends* on another: Servy's "restart the service" recovery stops a service through
.NET's ServiceController.Stop(), which stops its dependents too, then starts only the service
itself (Servy 9.8 source, src/Servy.Restarter/ServiceRestarter.cs; "Stops this service and any
services that are dependent on this service", learn.microsoft.com ServiceController.Stop), and
systemd's Requires= propagates restarts: a webserver restart would leave the daemon stopped, a
daemon restart would take the keeper down. The daemon needs PostgreSQL, not a webserver;
setup_dagster.ps1 starts the services in this order, and the keeper's delayed automatic start
(Servy) or After= (systemd) orders it at boot.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dagpg.render.access import OPERATORS, VIEWERS, Webserver

if TYPE_CHECKING:
    from dagpg.render.layout import Layout

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


def units(layout: Layout, *, workspace: str, quote: Callable[[str], str],
          service_manager: str) -> list[Unit]:
    """The services, in start order. `workspace`: the workspace.yaml path as the server spells
    it; `quote` quotes a path for the renderer's command line; `service_manager`: how the
    keeper on that server restarts services."""
    names = layout.settings.services
    webservers = [_webserver(web, workspace, quote) for web in layout.webservers]
    started = tuple(w.name for w in webservers)
    return [
        *webservers,
        Unit(DAEMON, names.daemon, "Dagster Daemon",
             "Dagster schedule and sensor daemon for the ArcPy orchestration project.",
             "dagster-daemon", ("run", "-w", quote(workspace)), "dagster_daemon",
             starts_after=started),
        Unit(KEEPER, names.keeper, "Dagster Keeper",
             "dagpg watch: restarts a hung Dagster daemon or a silent webserver, ends runs "
             "orphaned by a reboot.",
             "dagpg", ("watch", "--service-manager", service_manager), "dagpg_watch",
             starts_after=(*started, names.daemon), runs_as_admin=True, start_delayed=True),
    ]


def _webserver(web: Webserver, workspace: str, quote: Callable[[str], str]) -> Unit:
    args = ["-w", quote(workspace), "-h", web.host, "-p", str(web.port)]
    if web.prefix:
        args += ["--path-prefix", web.prefix]
    if web.read_only:
        args.append("--read-only")  # dagster-webserver: no launching, terminating, wiping
    who = {VIEWERS: "read-only, for viewers", OPERATORS: "for operators"}.get(web.audience)
    return Unit(
        WEBSERVER, web.service, "Dagster Webserver" + (" (read-only)" if web.read_only else ""),
        "Dagster web UI for the ArcPy orchestration project" + (f" ({who})" if who else "")
        + f"; {web.host} only, published by the reverse proxy.",
        "dagster-webserver", tuple(args),
        "dagster_webserver" + ("_readonly" if web.read_only else ""))
