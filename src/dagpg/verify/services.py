"""Where each service's DAGSTER_HOME comes from: its Servy service config, or the current
environment. Each service's dagster.yaml is resolved with that service's environment laid over
the current one, the way the service itself would resolve it.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dagpg.errors import ConfigurationError, DagpgError
from dagpg.instance import Instance, resolve_instance
from dagpg.settings import KitSettings

WEBSERVER, DAEMON = "webserver", "daemon"
READ_ONLY = "read_only_webserver"  # the viewers' webserver (dagpg.access), when its config is given
KEEPER = "keeper"  # dagpg watch, when its Servy config is given: it must use the same home
CURRENT_ENVIRONMENT = "the current environment"
_PROGRAMS = {WEBSERVER: "dagster-webserver", DAEMON: "dagster-daemon"}
_environ_lock = threading.Lock()


@dataclass(frozen=True)
class ServiceHome:
    """One service (webserver or daemon) and the DAGSTER_HOME it runs with."""

    role: str
    name: str
    source: str  # "the current environment" or "<path to a Servy config>"
    dagster_home: str | None
    environment: dict[str, str] = field(default_factory=dict, repr=False)
    parameters: str = ""  # the command line Servy passes to the program
    executable: str = ""  # the program Servy starts (ExecutablePath); "" from the environment

    @property
    def label(self) -> str:
        return f"{self.name} ({self.source})"

    def resolve(self, *, require_password: bool = False) -> Instance:
        """The instance this service loads; InstanceError when it cannot be resolved."""
        if not self.dagster_home and self.source != CURRENT_ENVIRONMENT:
            raise ConfigurationError(
                "sets no DAGSTER_HOME; set it in the service's environment to the folder "
                "holding dagster.yaml"
            )
        with overlay_environ(self.environment):
            return resolve_instance(self.dagster_home, require_password=require_password)

    def as_dict(self) -> dict:
        return {"role": self.role, "name": self.name, "source": self.source,
                "dagster_home": self.dagster_home}


def service_homes(
    settings: KitSettings,
    servy_configs: Sequence[str | os.PathLike] = (),
    dagster_home: str | os.PathLike | None = None,
) -> dict[str, ServiceHome]:
    """The webserver and the daemon: from their Servy configs, else the current environment."""
    found: dict[str, ServiceHome] = {}
    for path in servy_configs:
        service = _from_servy(Path(path), settings)
        if service.role in found:
            raise ConfigurationError(
                f"{path} and {found[service.role].source} both configure the {service.role}; "
                "give one Servy config per service"
            )
        found[service.role] = service
    home = str(dagster_home) if dagster_home else os.environ.get("DAGSTER_HOME")
    names = {WEBSERVER: settings.services.webserver, DAEMON: settings.services.daemon}
    for role in (WEBSERVER, DAEMON):
        found.setdefault(role, ServiceHome(role, names[role], CURRENT_ENVIRONMENT, home))
    return found


def _from_servy(path: Path, settings: KitSettings) -> ServiceHome:
    try:
        from dagpg.render.servy import read_service
    except ImportError:
        raise ConfigurationError(
            "--servy-config needs dagpg.render.servy, which this installation lacks; "
            "update dagpg or leave out --servy-config"
        ) from None
    service = read_service(path)
    role = _role(service, settings)
    if role is None:
        raise ConfigurationError(
            f"{path}: service {service.name!r} is none of {settings.services.webserver!r}, "
            f"{settings.services.daemon!r}, {settings.services.read_only_webserver!r} or "
            f"{settings.services.keeper!r} and runs neither dagster-webserver, dagster-daemon nor "
            "dagpg watch; give the services' own Servy configs"
        )
    environment = {str(k): str(v) for k, v in (service.environment or {}).items()}
    return ServiceHome(role, service.name, str(path), environment.get("DAGSTER_HOME"),
                       environment, service.parameters or "", service.executable)


def _role(service, settings: KitSettings) -> str | None:
    names = {settings.services.webserver.lower(): WEBSERVER,
             settings.services.daemon.lower(): DAEMON,
             settings.services.read_only_webserver.lower(): READ_ONLY,
             settings.services.keeper.lower(): KEEPER}
    if service.name.lower() in names:
        return names[service.name.lower()]
    command = f"{service.executable} {service.parameters}".lower()
    if "dagpg" in command and " watch" in f" {service.parameters}".lower():
        return KEEPER
    if _PROGRAMS[WEBSERVER] in command and "--read-only" in command:
        return READ_ONLY
    roles = [role for role, program in _PROGRAMS.items() if program in command]
    return roles[0] if len(roles) == 1 else None


def listen_url(service: ServiceHome) -> str | None:
    """http://host:port/prefix from the webserver's Servy parameters (-h, -p, -l), or None
    when it has none. 0.0.0.0 and :: are reached on the loopback address."""
    if service.role != WEBSERVER or not service.parameters.strip():
        return None
    try:
        tokens = [t.strip('"') for t in shlex.split(service.parameters, posix=False)]
    except ValueError:
        return None
    found: dict[str, str] = {}
    names = {"-h": "host", "--host": "host", "-p": "port", "--port": "port",
             "-l": "prefix", "--path-prefix": "prefix"}
    for i, token in enumerate(tokens):
        name, eq, value = token.partition("=")
        if name in names:
            found[names[name]] = value if eq else (tokens[i + 1] if i + 1 < len(tokens) else "")
    host = found.get("host") or "127.0.0.1"
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    host = f"[{host}]" if ":" in host else host
    prefix = found.get("prefix", "").strip("/")
    return f"http://{host}:{found.get('port') or 3000}{'/' + prefix if prefix else ''}"


@contextlib.contextmanager
def overlay_environ(extra: dict[str, str]) -> Iterator[None]:
    """Lay `extra` over os.environ for the duration (resolve_instance reads os.environ)."""
    if not extra:
        yield
        return
    with _environ_lock:
        saved = {k: os.environ.get(k) for k in extra}
        os.environ.update(extra)
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def resolve_each(services: dict[str, ServiceHome]) -> dict[str, Instance | DagpgError]:
    """Each service's instance, or the error (naming the service) that stops it resolving."""
    out: dict[str, Instance | DagpgError] = {}
    for role, service in services.items():
        try:
            out[role] = service.resolve()
        except DagpgError as exc:
            out[role] = ConfigurationError(f"{service.label}: {exc}")
    return out
