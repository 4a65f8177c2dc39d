"""Who may reach which webserver: the `dagpg.access` settings, checked once for every renderer.

With access enabled there are two webservers behind the proxy, each on its own loopback port:
the read-only one (`dagster-webserver --read-only`) for viewers at `dagpg.webserver.path_prefix`
(/dagster), the full one for operators at `dagpg.access.admin_path_prefix` (/dagster-admin).
Viewers and operators may open the first, only operators the second. Without access there is
one full webserver and no login (the guide's deployment).

Dagster OSS has no authentication of its own (dagster-io/dagster#2219): the proxy is the only
gate, so the webservers must never answer on anything but loopback (`dagpg verify` checks).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from dagpg.render.errors import RenderError
from dagpg.settings import KitSettings, Principals

VIEWERS, OPERATORS, EVERYONE = "viewers", "operators", "everyone"
# IIS URL Authorization takes comma-separated lists (users="a, b"); nginx map keys are quoted.
# ' and & stay allowed: Active Directory account names may hold them (O'Brien, GIS & Planning);
# web.config escapes them (quoteattr), iis_setup.ps1 doubles quotes (_ps), nginx quotes its keys.
# What AD does not allow in a logon name either ("Naming conventions in Active Directory",
# learn.microsoft.com: " , < > among them) is refused.
_PRINCIPAL = re.compile(r"^[^,\"<>\x00-\x1f]+$")


@dataclass(frozen=True)
class Webserver:
    """One dagster-webserver process as its Servy service and the proxy see it."""

    audience: str  # VIEWERS, OPERATORS or EVERYONE (no access control)
    service: str
    host: str
    port: int
    prefix: str  # "" (site root) or "/dagster"
    read_only: bool

    @property
    def backend(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass(frozen=True)
class AccessLayout:
    viewers: Principals
    operators: Principals
    admin_port: int
    admin_prefix: str
    htpasswd: Path | None  # resolved against the project; existence checked by nginx rendering

    def may_view(self) -> Principals:
        """Viewers and operators: both may read the viewer path."""
        return Principals(groups=_union(self.operators.groups, self.viewers.groups),
                          users=_union(self.operators.users, self.viewers.users))


def _union(*lists: list[str]) -> list[str]:
    seen: dict[str, str] = {}
    for name in (n for names in lists for n in names):
        seen.setdefault(name.lower(), name)  # Windows account names are case-insensitive
    return list(seen.values())


def access_from(settings: KitSettings, where: str, *, prefix: str, port: int,
                prefix_pattern: re.Pattern[str]) -> AccessLayout | None:
    """The checked access settings, None when access is off; RenderError names the key."""
    acc = settings.access
    if not acc.enabled:
        return None
    if acc.operators.empty:
        raise RenderError(
            f"{where}dagpg.access.operators is empty: nobody could launch a run; name the Windows "
            "groups or users (or nginx users) who operate Dagster, or set "
            "dagpg.access.enabled: false")
    for role in (VIEWERS, OPERATORS):
        principals: Principals = getattr(acc, role)
        for kind in ("groups", "users"):
            for name in getattr(principals, kind):
                if not name.strip() or not _PRINCIPAL.match(name):
                    raise RenderError(
                        f"{where}dagpg.access.{role}.{kind}: {name!r} is not a usable account "
                        "name (empty, or holds a comma, a double quote, < or >); write e.g. "
                        r"CORP\GIS Analysts")
    admin = acc.admin_path_prefix.rstrip("/")
    if not prefix_pattern.match(admin):
        raise RenderError(f"{where}dagpg.access.admin_path_prefix: {acc.admin_path_prefix!r} "
                          "must be like /dagster-admin (letters, digits, . _ ~ -)")
    if not prefix:
        raise RenderError(
            f"{where}dagpg.webserver.path_prefix: the site root would also cover "
            f"dagpg.access.admin_path_prefix {admin}; with access control each webserver needs "
            "its own path: set dagpg.webserver.path_prefix to e.g. /dagster")
    if _overlap(prefix, admin):
        raise RenderError(
            f"{where}dagpg.access.admin_path_prefix: {admin} collides with "
            f"dagpg.webserver.path_prefix {prefix} (the same path, or one inside the other, as "
            "IIS compares them: case-insensitively); choose e.g. /dagster and /dagster-admin")
    if acc.admin_port == port:
        raise RenderError(
            f"{where}dagpg.access.admin_port: {port} is also dagpg.webserver.port; give each "
            "webserver its own port")
    htpasswd = settings.resolve(acc.htpasswd) if acc.htpasswd.strip() else None
    return AccessLayout(viewers=acc.viewers, operators=acc.operators, admin_port=acc.admin_port,
                        admin_prefix=admin, htpasswd=htpasswd)


def _overlap(a: str, b: str) -> bool:
    a, b = a.lower() + "/", b.lower() + "/"
    return a.startswith(b) or b.startswith(a)


def checked_htpasswd(access: AccessLayout, where: str) -> Path:
    """The htpasswd file nginx will read: set, and there. Never opened for its hashes."""
    if access.htpasswd is None:
        raise RenderError(
            f"{where}dagpg.access.htpasswd is not set: nginx asks for a password from an "
            "htpasswd file; create one (`htpasswd -c FILE NAME`, or `openssl passwd -apr1`) and "
            "name it there")
    if not access.htpasswd.is_file():
        raise RenderError(
            f"{where}dagpg.access.htpasswd: {access.htpasswd}: no such file; create it with "
            f"`htpasswd -c {access.htpasswd} NAME` (apache2-utils) and re-run")
    if not access.operators.users:
        raise RenderError(
            f"{where}dagpg.access.operators.users is empty: nginx knows only the user names of "
            f"{access.htpasswd} (groups are Windows groups, for IIS); name at least one operator")
    return access.htpasswd
