"""Talk to a dagster-webserver, directly or through a reverse proxy: stdlib only, every call
bounded by a timeout, every failure one plain sentence (`WebError`).

What Dagster 1.13 serves (measured against a running webserver):
- `<prefix>/server_info`: JSON with dagster_version, dagster_webserver_version,
  dagster_graphql_version;
- `<prefix>/` (any other path): the UI's HTML, with
  `<script type="application/json" id="initialization-data">{"pathPrefix": ..., "instanceId":
  ...}</script>`; instanceId is `instance_info.run_storage_id` of the storage it reads;
- `<prefix>/graphql`: GraphQL over POST, and over a WebSocket with subprotocol `graphql-ws`
  (connection_init is answered with connection_ack).
With `--path-prefix /p` every route lives under /p, and / redirects to /p.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import re
import socket
import ssl
import time
import zlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

from dagpg.errors import ConfigurationError

_WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_MAX_BODY = 8 * 1024 * 1024
_ASK_AGAIN = (500, 502, 503)  # see WebClient._request
_ASK_AGAIN_AFTER_S = 1.0
_INIT_DATA = re.compile(
    r'<script[^>]*id="initialization-data"[^>]*>(.*?)</script>', re.DOTALL | re.IGNORECASE
)


class WebError(Exception):
    """A request to the webserver failed; str() is one line saying what happened."""


class Unreachable(WebError):
    """Nothing answered at all: refused, timed out, unknown host, TLS or connection failure."""


class LoginRequired(WebError):
    """HTTP 401: the proxy in front asks for a login."""


# What Chromium offers on every WebSocket (RFC 7692). A proxy that forwards the offer but not the
# compressed frames (IIS ARR 3) breaks the UI's subscriptions: the probe asks as a browser does.
DEFLATE_OFFER = "permessage-deflate; client_max_window_bits"


@dataclass(frozen=True)
class BaseUrl:
    """Where the UI is served: scheme, host, port and the path prefix (no trailing slash)."""

    scheme: str
    host: str
    port: int
    prefix: str

    @classmethod
    def parse(cls, url: str, *, option: str = "URL") -> BaseUrl:
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(
                f"{option} {url!r} is not an http(s) URL; give one like http://127.0.0.1:3000 "
                "or https://host/dagster"
            )
        if parts.query or parts.fragment:
            raise ConfigurationError(
                f"{option} {url!r} has a query or fragment; give only scheme, host and path"
            )
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise ConfigurationError(f"{option} {url!r} has an invalid port; fix it") from None
        prefix = "/" + parts.path.strip("/") if parts.path.strip("/") else ""
        return cls(parts.scheme, parts.hostname, port, prefix)

    def url(self, path: str = "") -> str:
        default = 443 if self.scheme == "https" else 80
        netloc = self.host if self.port == default else f"{self.host}:{self.port}"
        if ":" in self.host:
            netloc = f"[{self.host}]" if self.port == default else f"[{self.host}]:{self.port}"
        return f"{self.scheme}://{netloc}{self.prefix}{path}"

    @property
    def host_header(self) -> str:
        return urlsplit(self.url()).netloc


@dataclass(frozen=True)
class Page:
    status: int
    init_data: dict[str, Any]

    @property
    def instance_id(self) -> str | None:
        return self.init_data.get("instanceId") or None

    @property
    def path_prefix(self) -> str:
        return self.init_data.get("pathPrefix") or ""


class WebClient:
    """Requests to one webserver base URL; each call opens its own connection."""

    def __init__(self, base: BaseUrl, timeout: float, authorization: str | None = None):
        self.base = base
        self.timeout = timeout
        self.authorization = authorization  # an Authorization header value, e.g. "Basic ..."

    # -- requests ------------------------------------------------------------------------

    def server_info(self) -> dict[str, Any]:
        status, _headers, body = self._request("GET", "/server_info")
        _expect_ok(status, self.base.url("/server_info"))
        data = _json(body, self.base.url("/server_info"))
        if not isinstance(data, dict) or "dagster_version" not in data:
            raise WebError(f"{self.base.url('/server_info')} answered JSON without "
                           "dagster_version: is this a dagster-webserver?")
        return data

    def page(self) -> Page:
        """The UI's HTML page and its initialization data (following redirects)."""
        status, body = self._get_following("/")
        url = self.base.url("/")
        _expect_ok(status, url)
        match = _INIT_DATA.search(body.decode("utf-8", "replace"))
        if not match:
            raise WebError(f"{url} is not Dagster's UI page (no initialization-data): "
                           "is this URL a dagster-webserver?")
        try:
            data = json.loads(match.group(1))
        except ValueError:
            raise WebError(f"{url}: the page's initialization-data is not JSON") from None
        return Page(status, data if isinstance(data, dict) else {})

    def graphql(self, query: str) -> dict[str, Any]:
        url = self.base.url("/graphql")
        payload = json.dumps({"query": query}).encode()
        status, headers, body = self._request(
            "POST", "/graphql", body=payload,
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        if status in (301, 302, 303, 307, 308):
            raise WebError(f"{url} redirects to {headers.get('location')!r}; "
                           "use the URL it redirects to")
        _expect_ok(status, url)
        data = _json(body, url)
        if not isinstance(data, dict):
            raise WebError(f"{url} answered JSON that is not a GraphQL response")
        if data.get("errors"):
            first = data["errors"][0]
            message = first.get("message") if isinstance(first, dict) else str(first)
            raise WebError(f"{url}: GraphQL error: {_first_line(message)}")
        return data.get("data") or {}

    def websocket(self) -> tuple[str, str]:
        """Open `<prefix>/graphql` as a WebSocket with subprotocol graphql-ws, offering
        compression as a browser does, and get connection_ack for connection_init. Returns the
        negotiated subprotocol and extensions. When that fails but works without compression,
        the proxy breaks compressed frames: the error says so."""
        try:
            return self._websocket(compress=True)
        except Unreachable:
            raise
        except WebError as exc:
            try:
                self._websocket(compress=False)
            except WebError:
                raise exc from None
            raise WebError(
                f"{self.base.url('/graphql').replace('http', 'ws', 1)}: fails when the browser "
                f"asks for compression ({exc}) and works without: the proxy breaks compressed "
                "WebSocket frames (IIS ARR 3 does); blank the Sec-WebSocket-Extensions request "
                "header in the rewrite rule (server variable HTTP_SEC_WEBSOCKET_EXTENSIONS, as "
                "`dagpg render iis` writes it)") from None

    def _websocket(self, *, compress: bool) -> tuple[str, str]:
        url = self.base.url("/graphql").replace("http", "ws", 1)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {self.base.prefix}/graphql HTTP/1.1\r\n"
            f"Host: {self.base.host_header}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Protocol: graphql-ws\r\n"
            + (f"Sec-WebSocket-Extensions: {DEFLATE_OFFER}\r\n" if compress else "")
            + (f"Authorization: {self.authorization}\r\n" if self.authorization else "")
            + f"Origin: {self.base.url()}\r\n\r\n"
        )
        sock = self._socket(url)
        try:
            sock.sendall(request.encode())
            status, headers, rest = _read_head(sock, url)
            if status == 401:
                raise LoginRequired(f"{url}: the proxy asks for a login (HTTP 401)")
            if status != 101:
                raise WebError(
                    f"{url}: expected 101 Switching Protocols, got HTTP {status}: the proxy does "
                    "not pass WebSocket upgrades (IIS: install the WebSocket Protocol feature; "
                    "nginx: proxy_http_version 1.1 and Upgrade/Connection headers)"
                )
            accept = base64.b64encode(hashlib.sha1((key + _WS_GUID).encode()).digest()).decode()
            if headers.get("sec-websocket-accept") != accept:
                raise WebError(f"{url}: the upgrade answer has a wrong Sec-WebSocket-Accept")
            protocol = headers.get("sec-websocket-protocol", "")
            if protocol != "graphql-ws":
                raise WebError(f"{url}: upgraded without subprotocol graphql-ws "
                               f"(got {protocol or 'none'!r}); the proxy drops the header")
            extensions = headers.get("sec-websocket-extensions", "")
            deflate = extensions.split(";")[0].strip().lower() == "permessage-deflate"
            if extensions and not deflate:
                raise WebError(f"{url}: the server answered extensions we did not offer: "
                               f"{extensions!r}")
            sock.sendall(_frame(json.dumps({"type": "connection_init", "payload": {}})))
            reply = _read_text_frame(sock, rest, url, deflate=deflate)
            if reply.get("type") != "connection_ack":
                raise WebError(f"{url}: expected connection_ack, got {reply.get('type')!r}")
            try:
                sock.sendall(_frame(json.dumps({"type": "connection_terminate"})))
                sock.sendall(_frame(b"\x03\xe8", opcode=0x8))  # close, 1000
            except OSError:
                pass  # the server may already have closed: the probe has its answer
            return protocol, extensions
        except TimeoutError:
            raise WebError(f"{url}: no answer within {self.timeout:g} s") from None
        except OSError as exc:
            raise WebError(f"{url}: {_describe(exc)}") from None
        finally:
            sock.close()

    # -- plumbing ------------------------------------------------------------------------

    def _get_following(self, path: str, hops: int = 3) -> tuple[int, bytes]:
        status, headers, body = self._request("GET", path, headers={"Accept": "text/html"})
        target = self.base.url(path)
        while status in (301, 302, 303, 307, 308) and hops > 0:
            location = urljoin(target, headers.get("location", ""))
            target = location
            parts = urlsplit(location)
            base = BaseUrl.parse(f"{parts.scheme}://{parts.netloc}")
            same = (base.host, base.port) == (self.base.host, self.base.port)
            client = WebClient(base, self.timeout, self.authorization if same else None)
            status, headers, body = client._request(
                "GET", parts.path or "/", headers={"Accept": "text/html"}, raw_path=True)
            hops -= 1
        return status, body

    def _request(self, method: str, path: str, *, body: bytes | None = None,
                 headers: dict[str, str] | None = None, raw_path: bool = False,
                 retry: bool = True) -> tuple[int, dict[str, str], bytes]:
        """One request; an HTTP 500/502/503 is asked once more, a second later."""
        url = self.base.url(path)
        full_path = path if raw_path else f"{self.base.prefix}{path}"
        headers = dict(headers or {})
        if self.authorization:
            headers["Authorization"] = self.authorization
        if self.base.scheme == "https":
            conn = http.client.HTTPSConnection(self.base.host, self.base.port,
                                               timeout=self.timeout,
                                               context=ssl.create_default_context())
        else:
            conn = http.client.HTTPConnection(self.base.host, self.base.port,
                                              timeout=self.timeout)
        try:
            conn.request(method, full_path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read(_MAX_BODY)
            if resp.status in _ASK_AGAIN and retry:
                # A webserver's pooled database connection dies with a PostgreSQL restart and
                # fails the first request that uses it (HTTP 500); the next one reconnects.
                conn.close()
                time.sleep(_ASK_AGAIN_AFTER_S)
                return self._request(method, path, body=body, headers=headers,
                                     raw_path=raw_path, retry=False)
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
        except TimeoutError:
            raise Unreachable(f"{url}: no answer within {self.timeout:g} s") from None
        except (OSError, http.client.HTTPException) as exc:
            raise Unreachable(f"{url}: {_describe(exc)}") from None
        finally:
            conn.close()

    def _socket(self, url: str) -> socket.socket:
        try:
            sock = socket.create_connection((self.base.host, self.base.port),
                                            timeout=self.timeout)
            if self.base.scheme == "https":
                sock = ssl.create_default_context().wrap_socket(
                    sock, server_hostname=self.base.host)
            return sock
        except TimeoutError:
            raise Unreachable(f"{url}: no answer within {self.timeout:g} s") from None
        except OSError as exc:
            raise Unreachable(f"{url}: {_describe(exc)}") from None


def _expect_ok(status: int, url: str) -> None:
    if status != 200:
        reason = http.client.responses.get(status, "")
        error = LoginRequired if status == 401 else WebError
        raise error(f"{url} answered HTTP {status} {reason}".rstrip())


def _json(body: bytes, url: str) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        raise WebError(f"{url} did not answer JSON: is this URL a dagster-webserver?") from None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return "unknown host"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    if isinstance(exc, ConnectionResetError):
        return "connection reset by the server"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "the server closed the connection without answering"
    if isinstance(exc, http.client.HTTPException):
        return f"not an HTTP answer ({type(exc).__name__})"
    return _first_line(str(exc)) or type(exc).__name__


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else ""


def _read_head(sock: socket.socket, url: str) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise WebError(f"{url}: the server closed the connection during the upgrade")
        data += chunk
        if len(data) > 65536:
            raise WebError(f"{url}: the upgrade answer's headers are too long")
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        raise WebError(f"{url}: not an HTTP answer to the upgrade: {lines[0][:80]!r}") from None
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, rest


def _frame(payload: str | bytes, opcode: int = 0x1) -> bytes:
    """A masked client frame (RFC 6455 §5.2)."""
    data = payload.encode() if isinstance(payload, str) else payload
    head = bytes([0x80 | opcode])
    n = len(data)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))


def _read_text_frame(sock: socket.socket, buffered: bytes, url: str, *,
                     deflate: bool = False) -> dict[str, Any]:
    buf = bytearray(buffered)

    def need(n: int) -> bytes:
        while len(buf) < n:
            chunk = sock.recv(4096)
            if not chunk:
                raise WebError(f"{url}: the WebSocket closed before connection_ack")
            buf.extend(chunk)
        out = bytes(buf[:n])
        del buf[:n]
        return out

    b0, b1 = need(2)
    opcode, length = b0 & 0x0F, b1 & 0x7F
    if length == 126:
        length = int.from_bytes(need(2), "big")
    elif length == 127:
        length = int.from_bytes(need(8), "big")
    mask = need(4) if b1 & 0x80 else None
    if length > _MAX_BODY:
        raise WebError(f"{url}: WebSocket frame too large")
    payload = need(length)
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    if opcode == 0x8:
        raise WebError(f"{url}: the server closed the WebSocket instead of acknowledging")
    if opcode != 0x1:
        raise WebError(f"{url}: expected a text frame, got opcode {opcode}")
    if b0 & 0x40:  # RSV1: a compressed message (RFC 7692 §6)
        if not deflate:
            raise WebError(f"{url}: a compressed frame although no compression was agreed: "
                           "the proxy mangles WebSocket frames")
        try:
            # The server's window is at most 15 bits; a 15-bit inflater reads any smaller one.
            payload = zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff")
        except zlib.error:
            raise WebError(f"{url}: a compressed frame that does not inflate: the proxy "
                           "mangles compressed WebSocket frames") from None
    try:
        message = json.loads(payload)
    except ValueError:
        raise WebError(f"{url}: the WebSocket answered something that is not JSON") from None
    return message if isinstance(message, dict) else {}


# -- one pass over a base URL ------------------------------------------------------------

STATUS_QUERY = """{
  instance { daemonHealth { allDaemonStatuses {
    daemonType required lastHeartbeatTime lastHeartbeatErrors { message } } } }
  workspaceOrError {
    __typename
    ... on PythonError { message }
    ... on Workspace { locationEntries {
      name loadStatus
      locationOrLoadError {
        __typename
        ... on PythonError { message }
        ... on RepositoryLocation { repositories { name schedules {
          name scheduleState { status } } } }
      } } }
  }
}"""


@dataclass
class WebObservation:
    """What one base URL answered; each part is a value or the one-line error instead."""

    base: BaseUrl
    info: dict[str, Any] | None = None
    info_error: str | None = None
    unreachable: bool = False
    page: Page | None = None
    page_error: str | None = None
    status: dict[str, Any] | None = None
    status_error: str | None = None
    protocol: str | None = None
    extensions: str | None = None  # Sec-WebSocket-Extensions as the server answered
    websocket_error: str | None = None
    login_required: bool = False  # HTTP 401 and no credentials given


def observe(base: BaseUrl, *, timeout: float, websocket: bool = False,
            authorization: str | None = None, info_only: bool = False) -> WebObservation:
    """server_info first; when the host does not answer at all, or asks for a login none was
    given for, nothing else is tried. `info_only`: only server_info (the keeper's liveness
    probe)."""
    client = WebClient(base, timeout, authorization)
    obs = WebObservation(base)
    try:
        obs.info = client.server_info()
    except WebError as exc:
        obs.info_error = str(exc)
        obs.unreachable = isinstance(exc, Unreachable)
        obs.login_required = isinstance(exc, LoginRequired) and not authorization
        if obs.unreachable or obs.login_required:
            return obs
    if info_only:
        return obs
    try:
        obs.page = client.page()
    except WebError as exc:
        obs.page_error = str(exc)
    try:
        obs.status = client.graphql(STATUS_QUERY)
    except WebError as exc:
        obs.status_error = str(exc)
    if websocket:
        try:
            obs.protocol, obs.extensions = client.websocket()
        except WebError as exc:
            obs.websocket_error = str(exc)
    return obs
