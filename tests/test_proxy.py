"""A real reverse proxy and a real browser in front of a real dagster-webserver.

nginx (Debian's) stands in for IIS, with the configuration `dagpg render nginx` writes from the
same rule semantics as web.config (the path is forwarded unchanged). Headless Chromium opens the
UI through it, at the root and under /dagster, and the Chrome DevTools protocol reports what the
browser saw: every response's status, the GraphQL WebSocket's handshake and first frames, the
page's text and a screenshot. `dagpg verify --public-url` then checks the same URLs.

The guide's sub-path rule (strip the prefix) fails the same checks: with --path-prefix the
webserver redirects / back to /dagster (a redirect loop); without it, the page's assets are
requested outside /dagster and answer 404.

One webserver per mode (root, /dagster) and one daemon are shared by every test here.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from click.testing import CliRunner

from dagpg.cli import cli
from dagpg.localdb import free_port
from dagpg.render import nginx
from dagpg.render.layout import layout_from
from dagpg.settings import load_settings
from tests import pgharness, processes

pytestmark = pytest.mark.slow

PREFIX = "/dagster"
PROJECT_DIR = Path(__file__).resolve().parents[1]
SCREENSHOTS = PROJECT_DIR / "reports" / "test" / "proxy"  # kept for a look after the run
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                  "--remote-debugging-port=0", "--window-size=1400,900"]


def tool(name: str, env_var: str) -> str:
    path = os.environ.get(env_var) or shutil.which(name) or shutil.which(name, path="/usr/sbin")
    if not path:
        pgharness.unavailable(f"{name} is not installed; run scripts/install_test_tools.sh")
    return path


# --- the stack: PostgreSQL, webservers, daemon, nginx ----------------------------------------

@dataclass
class Proxy:
    name: str
    base: str       # what a user types, e.g. http://127.0.0.1:8080/dagster/
    backend: str    # the webserver behind it, e.g. http://127.0.0.1:3000/dagster
    folder: Path


@dataclass
class Stack:
    home: Path
    env: dict[str, str]
    proxies: dict[str, Proxy] = field(default_factory=dict)


def write_config(folder: Path, port: int, prefix: str) -> Path:
    path = folder / "config" / "config.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    # One webserver, no login: the rule itself is under test here (access: test_access.py).
    path.write_text(f"dagpg:\n  webserver:\n    port: {port}\n    path_prefix: '{prefix}'\n"
                    "  access:\n    enabled: false\n")
    return path


def render_nginx(folder: Path, backend_port: int, prefix: str, listen: int, *,
                 strip: bool = False) -> Path:
    """The CLI renders the right rule; the guide's rule comes from the library (not a CLI
    option: nobody should deploy it)."""
    config = write_config(folder, backend_port, prefix)
    out = folder / "rendered"
    if strip:
        layout = layout_from(load_settings(config))
        (out / "nginx").mkdir(parents=True)
        (out / "nginx" / "dagster.conf").write_bytes(nginx.render_server_block(
            layout, listen=f"127.0.0.1:{listen}", strip_prefix=True))
        (out / "nginx" / "nginx.conf").write_bytes(nginx.render_main_config())
    else:
        result = CliRunner().invoke(cli, ["render", "nginx", "--config", str(config), "--out",
                                          str(out), "--listen", f"127.0.0.1:{listen}"])
        assert result.exit_code == 0, result.output
    return out / "nginx"


def start_nginx(nginx_bin: str, folder: Path) -> subprocess.Popen:
    log = (folder / "nginx.out").open("wb")
    proc = subprocess.Popen([nginx_bin, "-p", str(folder), "-c", "nginx.conf", "-e", "error.log",
                             "-g", "daemon off;"], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    proc.log_path = folder / "error.log"  # type: ignore[attr-defined]
    return proc


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def stack(pg_server, template_database, tmp_path_factory):
    nginx_bin = tool("nginx", "DAGPG_NGINX")
    root = tmp_path_factory.mktemp("proxy")
    database = pg_server.create_database(template=template_database)
    # The committed dagster.yaml's `nux` block: no "Join the Dagster community" dialog.
    committed = yaml.safe_load((PROJECT_DIR / "dagster_home" / "dagster.yaml").read_text())
    home = pgharness.write_dagster_home(root / "dagster_home", pg_server.target(database),
                                        extra=yaml.safe_dump({"nux": committed["nux"]}))
    env = {"DAGSTER_HOME": str(home), pgharness.PASSWORD_VAR: pg_server.admin.password or ""}
    logs = root / "logs"
    started: list[subprocess.Popen] = []
    try:
        web_port, sub_port = free_port(), free_port()
        web = processes.start_webserver(home, web_port, logs, env=env)
        sub = processes.start_webserver(home, sub_port, logs, path_prefix=PREFIX, env=env)
        started += [web, sub, processes.start_daemon(home, logs, env=env)]
        s = Stack(home=home, env=env)
        for name, port, prefix, strip, backend_port in (
            ("root", free_port(), "", False, web_port),
            ("subpath", free_port(), PREFIX, False, sub_port),
            # The guide's rule in front of the webserver the guide pairs it with (--path-prefix)
            # and in front of one without it.
            ("guide-strip", free_port(), PREFIX, True, sub_port),
            ("guide-strip-no-prefix", free_port(), PREFIX, True, web_port),
        ):
            folder = render_nginx(root / name, backend_port, prefix, port, strip=strip)
            started.append(start_nginx(nginx_bin, folder))
            processes.wait_for(lambda p=port: listening(p), 20, f"nginx {name}", started[-1])
            backend_prefix = PREFIX if backend_port == sub_port else ""
            s.proxies[name] = Proxy(name, f"http://127.0.0.1:{port}{prefix}/",
                                    f"http://127.0.0.1:{backend_port}{backend_prefix}", folder)
        for proc, url in ((web, f"http://127.0.0.1:{web_port}/server_info"),
                          (sub, f"http://127.0.0.1:{sub_port}{PREFIX}/server_info")):
            processes.wait_for(lambda u=url: processes.http_json(u), 120, url, proc)
        # What `dagpg verify` checks besides the proxy must hold too: a backup exists, and the
        # schedules it expects (none here: the proxy is under test, not the definitions).
        verify_config = root / "verify" / "config.yml"
        verify_config.parent.mkdir()
        verify_config.write_text("dagpg:\n  verify:\n    schedules: []\n"
                                 "  access:\n    enabled: false\n")
        s.env = {**env, "DAGPG_CONFIG": str(verify_config)}
        backup = CliRunner().invoke(cli, ["backup", "--dest", str(root / "backups"), "--silent"],
                                    env=s.env)
        assert backup.exit_code == 0, backup.output
        yield s
    finally:
        for proc in reversed(started):
            processes.stop(proc)
        pg_server.drop_database(database)


# --- the browser, through the Chrome DevTools protocol ---------------------------------------

@dataclass
class Visit:
    url: str
    responses: list[tuple[str, int]]          # same-origin requests: (url, status)
    failures: list[tuple[str, str]]           # same-origin requests that failed: (url, error)
    websockets: dict[str, dict]               # url -> {"status", "protocol", "frames"}
    text: str
    screenshot: Path


class Browser:
    def __init__(self, chromium: str, folder: Path, screenshots: Path):
        from websockets.sync.client import connect

        self.screenshots = screenshots
        # Two tries: on a loaded machine Chromium has been seen to start without its endpoint.
        url = self._start(chromium, folder, "first") or self._start(chromium, folder, "second")
        if not url:
            log = (folder / "chromium.log").read_text(errors="replace").splitlines()[-8:]
            raise AssertionError("Chromium did not start its DevTools endpoint twice: "
                                 + " | ".join(log))
        self._exit = contextlib.ExitStack()
        self.ws = self._exit.enter_context(connect(url, max_size=None, open_timeout=10))
        self.ids = itertools.count(1)

    def _start(self, chromium: str, folder: Path, attempt: str) -> str | None:
        """Start Chromium; its DevTools URL from the DevToolsActivePort file it writes, or None.
        Its stderr goes to a file: a pipe nobody reads would block it once full."""
        profile = folder / f"profile-{attempt}"
        with (folder / "chromium.log").open("a") as log:
            self.proc = subprocess.Popen(
                [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
                stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
        active = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.proc.poll() is None:
            lines = active.read_text().splitlines() if active.exists() else []
            if len(lines) >= 2:
                return f"ws://127.0.0.1:{lines[0]}{lines[1]}"
            time.sleep(0.2)
        processes.stop(self.proc, timeout=10)
        return None

    def close(self) -> None:
        self._exit.close()
        processes.stop(self.proc, timeout=10)

    def _send(self, method: str, params: dict | None = None, session: str | None = None,
              events: list | None = None) -> dict:
        ident = next(self.ids)
        message = {"id": ident, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        self.ws.send(json.dumps(message))
        while True:
            reply = json.loads(self.ws.recv(timeout=30))
            if reply.get("id") == ident:
                assert "error" not in reply, reply["error"]
                return reply["result"]
            if events is not None:
                events.append(reply)

    def visit(self, url: str, name: str, ready: str = "Timeline", timeout: float = 45) -> Visit:
        """Open url in a new tab; return once the UI's WebSocket got its connection_ack and the
        page shows Dagster's navigation with its definitions loaded, or the main document
        failed, or timeout."""
        target = self._send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self._send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"]
        events: list[dict] = []
        for method in ("Network.enable", "Page.enable"):
            self._send(method, session=session, events=events)
        self._send("Page.navigate", {"url": url}, session=session, events=events)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                events.append(json.loads(self.ws.recv(timeout=1)))
            except TimeoutError:
                pass
            if _acked(events):
                text = self._text(session, events)
                if ready in text and "Loading" not in text:
                    self._pump(events, 2.5)  # lazy icons, fonts, and any dialog
                    break
            if any(e.get("method") == "Network.loadingFailed"
                   and e["params"].get("type") == "Document" for e in events):
                time.sleep(1)  # let the error page render for the screenshot
                break
        text = self._text(session, events)
        png = self._send("Page.captureScreenshot", {"format": "png"}, session, events)["data"]
        shot = self.screenshots / f"{name}.png"
        shot.write_bytes(base64.b64decode(png))
        self._send("Target.closeTarget", {"targetId": target})
        return _visit(url, events, text, shot)

    def _pump(self, events: list, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                events.append(json.loads(self.ws.recv(timeout=left)))
            except TimeoutError:
                return

    def _text(self, session: str, events: list) -> str:
        result = self._send("Runtime.evaluate", {"expression": "document.body ? "
                            "document.body.innerText : ''", "returnByValue": True},
                            session, events)
        return result["result"].get("value") or ""


def _acked(events: list[dict]) -> bool:
    return any(e.get("method") == "Network.webSocketFrameReceived"
               and '"connection_ack"' in e["params"]["response"]["payloadData"] for e in events)


def _visit(url: str, events: list[dict], text: str, shot: Path) -> Visit:
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(url))
    requests: dict[str, str] = {}
    responses, failures, sockets = [], [], {}
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Network.requestWillBeSent":
            requests[params["requestId"]] = params["request"]["url"]
            redirect = params.get("redirectResponse")
            if redirect and redirect["url"].startswith(origin):
                responses.append((redirect["url"], redirect["status"]))
        elif method == "Network.responseReceived":
            if params["response"]["url"].startswith(origin):
                responses.append((params["response"]["url"], params["response"]["status"]))
        elif method == "Network.loadingFailed":
            where = requests.get(params["requestId"], "")
            if where.startswith(origin) and not params.get("canceled"):
                failures.append((where, params["errorText"]))
        elif method == "Network.webSocketCreated":
            sockets[params["requestId"]] = {"url": params["url"], "status": None,
                                            "protocol": None, "frames": []}
        elif method == "Network.webSocketHandshakeResponseReceived":
            headers = {k.lower(): v for k, v in params["response"]["headers"].items()}
            sockets[params["requestId"]].update(status=params["response"]["status"],
                                                protocol=headers.get("sec-websocket-protocol"))
        elif method == "Network.webSocketFrameReceived":
            sockets[params["requestId"]]["frames"].append(params["response"]["payloadData"])
    return Visit(url, responses, failures, {s["url"]: s for s in sockets.values()}, text, shot)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium = tool("chromium", "DAGPG_CHROMIUM")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for old in SCREENSHOTS.glob("*.png"):
        old.unlink()
    b = Browser(chromium, tmp_path_factory.mktemp("chromium"), SCREENSHOTS)
    yield b
    b.close()


@pytest.fixture(scope="module")
def visits(stack, browser):
    found = {name: browser.visit(proxy.base, name) for name, proxy in stack.proxies.items()}
    for name in ("root", "subpath"):  # the definitions, loaded through the proxy
        found[f"{name}-jobs"] = browser.visit(stack.proxies[name].base + "jobs", f"{name}-jobs",
                                              ready="park_access_job")
    return found


def verify(stack: Stack, proxy: Proxy):
    result = CliRunner().invoke(
        cli, ["verify", "--public-url", proxy.base.rstrip("/"), "--webserver-url",
              proxy.backend, "--json"], env=stack.env)
    return result, (json.loads(result.output) if result.output.startswith("{") else None)


# --- the right rule works, at the root and under /dagster ------------------------------------

@pytest.mark.parametrize("name", ["root", "subpath"])
def test_the_ui_renders_through_the_proxy(visits, name):
    visit = visits[name]
    assert "Overview" in visit.text and "Timeline" in visit.text, (visit.text[:300],
                                                                   visit.screenshot)
    jobs = visits[f"{name}-jobs"]
    assert "park_access_job" in jobs.text, (jobs.text[:300], jobs.screenshot)
    assert visit.screenshot.stat().st_size > 20_000, visit.screenshot
    assert visit.screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("name", ["root", "subpath"])
def test_no_community_dialog_asks_for_an_email(stack, visits, name):
    """Dagster shows "Join the Dagster community" (an email form over every page) to a first
    visitor on 127.0.0.1 or localhost unless dagster.yaml says `nux: enabled: false`."""
    for visit in (visits[name], visits[f"{name}-jobs"]):
        assert "Join the Dagster community" not in visit.text, visit.screenshot
        assert "Overview" in visit.text, (visit.text[:300], visit.screenshot)
    answer = graphql(stack.proxies[name].backend, "{ shouldShowNux }")
    assert answer == {"data": {"shouldShowNux": False}}


def graphql(base: str, query: str) -> dict:
    request = urllib.request.Request(f"{base}/graphql", data=json.dumps({"query": query}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read())


@pytest.mark.parametrize("name", ["root", "subpath"])
def test_no_asset_fails_through_the_proxy(visits, name):
    visit = visits[name]
    prefix = PREFIX if name == "subpath" else ""
    assets = [u for u, _ in visit.responses if f"{prefix}/_next/static/" in u]
    assert len(assets) >= 10, visit.responses
    bad = [(u, s) for u, s in visit.responses if s >= 400]
    assert bad == [] and visit.failures == [], (bad, visit.failures)


@pytest.mark.parametrize("name", ["root", "subpath"])
def test_the_graphql_websocket_connects_through_the_proxy(stack, visits, name):
    visit = visits[name]
    origin = stack.proxies[name].base.replace("http://", "ws://")
    ws = visit.websockets.get(f"{origin}graphql")
    assert ws, visit.websockets
    assert (ws["status"], ws["protocol"]) == (101, "graphql-ws")
    assert any('"connection_ack"' in frame for frame in ws["frames"]), ws["frames"]


@pytest.mark.parametrize("name", ["root", "subpath"])
def test_dagpg_verify_passes_through_the_proxy(stack, name):
    result, report = verify(stack, stack.proxies[name])
    assert result.exit_code == 0, result.output
    passed = {c["name"]: c["status"] for c in report["checks"]}
    assert passed["public.websocket"] == passed["public.instance_id"] == "ok", passed


# --- the guide's rule fails them ---------------------------------------------------------------

def test_the_guides_rule_loops_with_path_prefix(visits):
    visit = visits["guide-strip"]
    assert ("Overview" not in visit.text), visit.screenshot
    assert any(err == "net::ERR_TOO_MANY_REDIRECTS" for _, err in visit.failures), visit.failures
    assert all(status == 307 for _, status in visit.responses), visit.responses
    assert visit.websockets == {}


def test_the_guides_rule_without_path_prefix_loses_the_assets(visits):
    visit = visits["guide-strip-no-prefix"]
    assert "Overview" not in visit.text, visit.screenshot
    missing = [u for u, s in visit.responses if s == 404 and "/_next/static/" in u]
    assert missing and all(f"{PREFIX}/" not in u for u in missing), visit.responses
    assert visit.websockets == {}


def test_dagpg_verify_fails_through_the_guides_rule(stack):
    result, report = verify(stack, stack.proxies["guide-strip"])
    assert result.exit_code == 1, result.output
    failed = {c["name"] for c in report["checks"] if c["status"] == "fail"}
    assert "public.server_info" in failed, report["checks"]


def test_rendered_nginx_config_is_valid(stack):
    nginx_bin = tool("nginx", "DAGPG_NGINX")
    folder = stack.proxies["subpath"].folder
    result = subprocess.run([nginx_bin, "-t", "-p", str(folder), "-c", "nginx.conf",
                             "-e", "error.log"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr
