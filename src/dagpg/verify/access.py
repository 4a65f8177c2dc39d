"""`dagpg verify --public-url`'s access checks: nobody unauthenticated gets through the proxy,
the viewers' webserver cannot launch anything, and no webserver answers past loopback.

Dagster OSS has no login of its own (dagster-io/dagster#2219): whoever reaches a webserver's
port can launch, terminate and wipe. So the proxy must refuse anonymous requests on every path,
and the ports must not answer on the machine's other addresses, where the proxy is bypassed.
"""

from __future__ import annotations

import base64
import json
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from dagpg.errors import ConfigurationError
from dagpg.settings import KitSettings
from dagpg.verify.checks import FAIL, OK, SKIP, WARN, CheckResult
from dagpg.verify.webserver import BaseUrl, WebClient, WebError, _read_head

PUBLIC_PASSWORD_VAR = "DAGPG_PUBLIC_PASSWORD"
PERMISSIONS_QUERY = "{ permissions { permission value } }"  # dagster-graphql's root field
LAUNCH = "launch_pipeline_execution"  # dagster._core.workspace.permissions.Permissions
_REFUSED = (401, 403)


def basic_authorization(user: str | None) -> str | None:
    """The Authorization header for --public-user, its password from the environment (never
    from the command line); None without a user."""
    if not user:
        return None
    password = os.environ.get(PUBLIC_PASSWORD_VAR)
    if not password:
        raise ConfigurationError(f"--public-user {user}: set {PUBLIC_PASSWORD_VAR} to its "
                                 "password (a password is never given on the command line)")
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return f"Basic {token}"


@dataclass(frozen=True)
class Paths:
    """The public paths (on the --public-url's origin) and the webservers behind them."""

    viewer: BaseUrl
    viewer_direct: BaseUrl
    admin: BaseUrl | None
    admin_direct: BaseUrl | None


def paths(settings: KitSettings, public: BaseUrl) -> Paths:
    web, acc = settings.webserver, settings.access
    host = f"[{web.host}]" if ":" in web.host else web.host
    direct = BaseUrl.parse(f"http://{host}:{web.port}{_prefix(web.path_prefix)}")
    if not acc.enabled:
        return Paths(public, direct, None, None)
    return Paths(public, direct, replace(public, prefix=_prefix(acc.admin_path_prefix)),
                 BaseUrl.parse(f"http://{host}:{acc.admin_port}{_prefix(acc.admin_path_prefix)}"))


def _prefix(value: str) -> str:
    return "/" + value.strip("/") if value.strip("/") else ""


def checks(settings: KitSettings, public: BaseUrl, *, timeout: float,
           authorization: str | None = None, ports: tuple[int, ...] = ()) -> list[CheckResult]:
    """The access checks; `ports`: webserver ports known besides the configured ones (e.g.
    --webserver-url's)."""
    where = paths(settings, public)
    with ThreadPoolExecutor(max_workers=3, thread_name_prefix="verify-access") as pool:
        anonymous = pool.submit(anonymous_refused, settings, where, timeout=timeout)
        read_only = pool.submit(read_only_viewers, settings, where, timeout=timeout,
                                authorization=authorization)
        loopback = pool.submit(loopback_only, settings, timeout=timeout, ports=ports)
        return [anonymous.result(), read_only.result(), loopback.result()]


# -- anonymous requests are refused --------------------------------------------------------

def anonymous_refused(settings: KitSettings, where: Paths, *, timeout: float) -> CheckResult:
    name, title = "access.anonymous", "Anonymous refused"
    if not settings.access.enabled:
        return CheckResult(name, title, WARN,
                           "dagpg.access.enabled is false: anyone who reaches the proxy can "
                           "launch, terminate and wipe; see the README, \"Who can do what\"")
    answers: dict[str, int] = {}
    for base in (where.viewer, where.admin):
        client = WebClient(base, timeout)  # no credentials
        for method, path, body in (("GET", "/", None), ("GET", "/server_info", None),
                                   ("POST", "/graphql", json.dumps({"query": "{ version }"}))):
            try:
                status, _, _ = client._request(method, path, body=body and body.encode(),
                                               headers={"Content-Type": "application/json"})
            except WebError as exc:
                return CheckResult(name, title, FAIL, str(exc), {"url": base.url(path)})
            answers[f"{method} {base.url(path)}"] = status
        answers[f"WebSocket {base.url('/graphql')}"] = _upgrade_status(base, timeout)
    # 0: the connection closed without an answer, which lets nobody in either.
    through = {k: v for k, v in answers.items() if v not in (*_REFUSED, 0)}
    if through:
        shown = "; ".join(f"{k} answered {v}" for k, v in through.items())
        return CheckResult(name, title, FAIL,
                           f"anonymous requests get through the proxy: {shown}; turn on its "
                           "authentication (dagpg render iis|nginx)", {"answers": answers})
    statuses = sorted(set(answers.values()))
    return CheckResult(name, title, OK,
                       f"{len(answers)} anonymous requests to {where.viewer.url()} and "
                       f"{where.admin.url()} (page, server_info, GraphQL, WebSocket) answered "
                       f"{'/'.join(map(str, statuses))}", {"answers": answers})


def _upgrade_status(base: BaseUrl, timeout: float) -> int:
    """The HTTP status a WebSocket upgrade on <prefix>/graphql gets (101 = it went through)."""
    key = base64.b64encode(os.urandom(16)).decode()
    request = (f"GET {base.prefix}/graphql HTTP/1.1\r\nHost: {base.host_header}\r\n"
               "Upgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
               "Sec-WebSocket-Protocol: graphql-ws\r\n\r\n")
    client = WebClient(base, timeout)
    url = base.url("/graphql")
    sock = client._socket(url)
    try:
        sock.sendall(request.encode())
        status, _, _ = _read_head(sock, url)
        return status
    except (OSError, WebError):
        return 0  # no answer at all: not a refusal, not a way in either
    finally:
        sock.close()


# -- the viewers' webserver is read-only -----------------------------------------------------

def read_only_viewers(settings: KitSettings, where: Paths, *, timeout: float,
                      authorization: str | None = None) -> CheckResult:
    """Ask the viewers' webserver which permissions it grants (GraphQL `permissions`, what the
    UI itself asks to grey out its buttons): none may be granted, launching runs least of all.
    Directly on its port, and through the proxy's viewer path when a login is given (the proxy
    must send viewers to that webserver). The operators' webserver must grant launching."""
    name, title = "access.read_only", "Viewers read-only"
    if not settings.access.enabled:
        return CheckResult(name, title, SKIP, "one webserver, no read-only one "
                                              "(dagpg.access.enabled is false)")
    targets = [(where.viewer_direct, None)]
    if authorization:
        targets.append((where.viewer, authorization))
    data: dict[str, object] = {}
    for base, auth in targets:
        try:
            granted = _granted(base, timeout, auth)
        except WebError as exc:
            return CheckResult(name, title, FAIL, f"{exc}; is the read-only webserver "
                               f"({settings.services.read_only_webserver}) running?", data)
        data[base.url()] = granted
        if granted:
            first = LAUNCH if LAUNCH in granted else granted[0]
            return CheckResult(
                name, title, FAIL,
                f"{base.url()} grants {first} (and {len(granted) - 1} more): viewers can change "
                "things; start the viewers' webserver with --read-only (dagpg render servy) and "
                "point the proxy's viewer path at it", data)
    try:
        operators = _granted(where.admin_direct, timeout, None)
    except WebError as exc:
        return CheckResult(name, title, WARN, f"viewers' webserver is read-only, but the "
                           f"operators' does not answer: {exc}", data)
    checked = " and ".join(b.url() for b, _ in targets)
    if LAUNCH not in operators:
        return CheckResult(name, title, WARN,
                           f"{checked} grants nothing, but {where.admin_direct.url()} does not "
                           "grant launching runs either: operators cannot launch; start it "
                           "without --read-only", data)
    verb = "grant" if len(targets) > 1 else "grants"
    return CheckResult(name, title, OK,
                       f"{checked} {verb} no permission (no launching, terminating, wiping); "
                       f"{where.admin_direct.url()} grants launching", data)


def _granted(base: BaseUrl, timeout: float, authorization: str | None) -> list[str]:
    data = WebClient(base, timeout, authorization).graphql(PERMISSIONS_QUERY)
    permissions = data.get("permissions")
    if not isinstance(permissions, list):
        raise WebError(f"{base.url('/graphql')} answered no permissions list")
    return sorted(p["permission"] for p in permissions if p.get("value"))


# -- the webservers answer on loopback only ---------------------------------------------------

def machine_addresses() -> list[str]:
    """Where the exposure check probes: every address of this machine but loopback."""
    return interface_addresses()


def interface_addresses() -> list[str]:
    """Every address of this machine's interfaces but loopback (IPv6 link-local ones with
    their scope, e.g. fe80::1%eth0)."""
    import ipaddress

    import psutil

    found = []
    for entries in psutil.net_if_addrs().values():
        for entry in entries:
            if entry.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            try:
                if ipaddress.ip_address(entry.address.split("%")[0]).is_loopback:
                    continue
            except ValueError:
                continue
            found.append(entry.address)
    return sorted(set(found))


def loopback_only(settings: KitSettings, *, timeout: float, ports: tuple[int, ...] = (),
                  addresses: list[str] | None = None) -> CheckResult:
    name, title = "access.loopback_only", "Loopback only"
    known = {settings.webserver.port, *ports}
    if settings.access.enabled:
        known.add(settings.access.admin_port)
    ports = tuple(sorted(known))
    addresses = addresses or list(settings.access.probe_addresses) or machine_addresses()
    if not addresses:
        return CheckResult(name, title, OK, "this machine has no address but loopback")
    probes = [(a, p) for a in addresses for p in ports]
    wait = min(timeout, 2.0)
    with ThreadPoolExecutor(max_workers=min(16, len(probes))) as pool:
        answered = [probe for probe, ok in zip(probes, pool.map(
            lambda ap: _answers(*ap, wait), probes), strict=True) if ok]
    data = {"addresses": addresses, "ports": ports,
            "answered": [f"{a}:{p}" for a, p in answered]}
    if answered:
        shown = ", ".join(f"port {p} on {a}" for a, p in answered)
        return CheckResult(
            name, title, FAIL,
            f"{shown} answers: a webserver listens beyond loopback, where anyone bypasses the "
            "proxy and its login; start it with -h 127.0.0.1 (dagpg render servy does) and "
            "restart it", data)
    return CheckResult(name, title, OK,
                       f"port{'s' if len(ports) > 1 else ''} {', '.join(map(str, ports))} "
                       f"answer on no address but loopback (probed {', '.join(addresses)})", data)


def _answers(address: str, port: int, timeout: float) -> bool:
    try:
        infos = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return False
    family, kind, proto, _, sockaddr = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.settimeout(timeout)
        try:
            return sock.connect_ex(sockaddr) == 0
        except OSError:
            return False
