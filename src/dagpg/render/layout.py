"""The deployment as the rendered files see it: server paths and the webserver's address.

Built once from the kit's settings (`dagpg.windows` and `dagpg.webserver` in config.yml), so
every rendered file (Servy services, IIS, nginx, the backup task) agrees on one set of values.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import PureWindowsPath

from dagpg.render.access import EVERYONE, OPERATORS, VIEWERS, AccessLayout, Webserver, access_from
from dagpg.render.errors import RenderError
from dagpg.settings import KitSettings

_PREFIX = re.compile(r"^(/[A-Za-z0-9._~-]+)+$")
_PATH_BAD = re.compile(r'[<>"|?*\x00-\x1f%]')


@dataclass(frozen=True)
class Layout:
    root: PureWindowsPath
    env_dir: PureWindowsPath
    dagster_home: PureWindowsPath
    log_dir: PureWindowsPath
    project_env: str
    iis_site: str
    webserver_name: str
    daemon_name: str
    host: str
    port: int
    path_prefix: str  # "" or "/dagster" (no trailing slash)
    settings: KitSettings
    read_only_name: str = ""
    access: AccessLayout | None = None  # None: one full webserver, no login

    @property
    def webservers(self) -> tuple[Webserver, ...]:
        """The full webserver, and with access control the read-only one users open."""
        if self.access is None:
            return (Webserver(EVERYONE, self.webserver_name, self.host, self.port,
                              self.path_prefix, read_only=False),)
        return (Webserver(OPERATORS, self.webserver_name, self.host, self.access.admin_port,
                          self.access.admin_prefix, read_only=False),
                Webserver(VIEWERS, self.read_only_name, self.host, self.port, self.path_prefix,
                          read_only=True))

    @property
    def workspace(self) -> PureWindowsPath:
        return self.dagster_home / "workspace.yaml"

    def script(self, name: str) -> PureWindowsPath:
        """An executable in the conda env's Scripts folder (dagster-webserver.exe, dagpg.exe)."""
        return self.env_dir / "Scripts" / f"{name}.exe"

    @property
    def backend(self) -> str:
        """The webserver's origin, as the proxy reaches it."""
        return f"http://{self.host}:{self.port}"

    @property
    def service_environment(self) -> dict[str, str]:
        """What both services (and the backup task) get: identical by construction."""
        return {"DAGSTER_HOME": str(self.dagster_home), "PROJECT_ENV": self.project_env}


def layout_from(settings: KitSettings) -> Layout:
    """Validate and resolve the settings; RenderError names the config key that is wrong."""
    win, web = settings.windows, settings.webserver
    where = f"{settings.path}: " if settings.path else ""
    root = PureWindowsPath(win.project_root)
    if not root.is_absolute():
        raise RenderError(f"{where}dagpg.windows.project_root: {win.project_root!r} is not an "
                          r"absolute Windows path; write e.g. C:\projects\arcpy-orchestration")
    paths = {}
    for key in ("project_root", "env_dir", "dagster_home", "log_dir"):
        value = getattr(win, key)
        if _PATH_BAD.search(value) or not value.strip():
            raise RenderError(f"{where}dagpg.windows.{key}: {value!r} is not a usable Windows "
                              "path (empty, or holds one of < > \" | ? * %)")
        p = PureWindowsPath(value)
        paths[key] = p if p.is_absolute() else root / p
    if not re.fullmatch(r"[A-Za-z0-9_-]+", win.project_env):
        raise RenderError(f"{where}dagpg.windows.project_env: {win.project_env!r} must be a "
                          "plain name such as prod")
    if web.host == "localhost":
        raise RenderError(f"{where}dagpg.webserver.host: localhost may resolve to ::1 while the "
                          "proxy dials 127.0.0.1 (502 Bad Gateway); write 127.0.0.1")
    if not _is_loopback(web.host):
        raise RenderError(
            f"{where}dagpg.webserver.host: {web.host} would expose the unauthenticated Dagster UI "
            "past the reverse proxy and HTTPS; use 127.0.0.1 and publish it through IIS")
    prefix = web.path_prefix.rstrip("/")
    if prefix and not _PREFIX.match(prefix):
        raise RenderError(f"{where}dagpg.webserver.path_prefix: {web.path_prefix!r} must be "
                          "empty or like /dagster (letters, digits, . _ ~ -)")
    for key in ("webserver", "daemon", "read_only_webserver", "keeper"):
        name = getattr(settings.services, key)
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise RenderError(f"{where}dagpg.services.{key}: {name!r} must be a plain Windows "
                              "service name (letters, digits, _ . -)")
    access = access_from(settings, where, prefix=prefix, port=web.port, prefix_pattern=_PREFIX)
    if access and settings.services.read_only_webserver.lower() in (
            settings.services.webserver.lower(), settings.services.daemon.lower()):
        raise RenderError(f"{where}dagpg.services.read_only_webserver: "
                          f"{settings.services.read_only_webserver!r} is another service's name; "
                          "give each service its own")
    return Layout(
        root=paths["project_root"], env_dir=paths["env_dir"],
        dagster_home=paths["dagster_home"], log_dir=paths["log_dir"],
        project_env=win.project_env, iis_site=win.iis_site,
        webserver_name=settings.services.webserver, daemon_name=settings.services.daemon,
        host=web.host, port=web.port, path_prefix=prefix, settings=settings,
        read_only_name=settings.services.read_only_webserver, access=access,
    )


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
