"""Access control at the front door, through a real nginx and a real browser.

The deployment `dagpg render nginx` writes with `dagpg.access` on: two real webservers on one
PostgreSQL instance, the read-only one (`--read-only`) under /dagster for viewers, the full one
under /dagster-admin for operators, behind nginx's Basic authentication against an htpasswd file
made with `openssl passwd -apr1`. Headless Chromium logs in as each kind of user (and as nobody)
and the Chrome DevTools protocol reports what it saw; `dagpg verify --public-url` checks the
same deployment, and fails on deployments that let anonymous users or compressed WebSockets
through wrongly.

One set of webservers, daemon, nginx and browser is shared by every test here.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner

from dagpg.cli import cli
from dagpg.localdb import free_port
from tests import pgharness, processes
from tests.test_proxy import (
    SCREENSHOTS,
    Browser,
    _acked,
    _visit,
    listening,
    start_nginx,
    tool,
)

pytestmark = pytest.mark.slow

DEFINITIONS = Path(__file__).resolve().parent / "verify_definitions.py"
VIEWER, ADMIN = "/dagster", "/dagster-admin"
USERS = {"viewer": "viewer-pw", "operator": "operator-pw", "stranger": "stranger-pw"}
ASSET = "verify_probe"
JOB = "verify_probe_job"


@dataclass
class Stack:
    root: Path
    env: dict[str, str]
    config: Path
    origin: str            # nginx, e.g. http://127.0.0.1:8080
    viewer_port: int
    admin_port: int
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def url(self, path: str) -> str:
        return self.origin + path


def basic(user: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{USERS[user]}".encode()).decode()


def http(url: str, *, user: str | None = None, data: dict | None = None,
         timeout: float = 20) -> tuple[int, str]:
    request = urllib.request.Request(url, data=json.dumps(data).encode() if data else None,
                                     headers={"Content-Type": "application/json"})
    if user:
        request.add_header("Authorization", basic(user))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


def graphql(stack: Stack, prefix: str, user: str, query: str, variables: dict | None = None):
    status, body = http(stack.url(f"{prefix}/graphql"), user=user,
                        data={"query": query, "variables": variables or {}})
    assert status == 200, (status, body[:300])
    return json.loads(body)


def write_htpasswd(path: Path) -> Path:
    openssl = tool("openssl", "DAGPG_OPENSSL")
    lines = []
    for user, password in USERS.items():
        # The password goes to openssl on stdin, never on its command line.
        hashed = subprocess.run([openssl, "passwd", "-apr1", "-stdin"], input=password,
                                capture_output=True, text=True, check=True).stdout.strip()
        assert hashed.startswith("$apr1$")
        lines.append(f"{user}:{hashed}")
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o644)
    return path


def write_config(folder: Path, *, viewer_port: int, admin_port: int, htpasswd: Path,
                 enabled: bool = True) -> Path:
    path = folder / "config" / "config.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"""dagpg:
  webserver:
    port: {viewer_port}
    path_prefix: {VIEWER}
  access:
    enabled: {str(enabled).lower()}
    viewers: {{users: [viewer]}}
    operators: {{users: [operator], groups: [Administrators]}}
    admin_port: {admin_port}
    admin_path_prefix: {ADMIN}
    htpasswd: {htpasswd}
    probe_addresses: [127.0.0.2]
""")
    return path


def render_and_start_nginx(folder: Path, config: Path, nginx_bin: str) -> tuple[str, subprocess.Popen]:
    port = free_port()
    result = CliRunner().invoke(cli, ["render", "nginx", "--config", str(config), "--out",
                                      str(folder / "rendered"), "--listen", f"127.0.0.1:{port}"])
    assert result.exit_code == 0, result.output
    proc = start_nginx(nginx_bin, folder / "rendered" / "nginx")
    processes.wait_for(lambda: listening(port), 20, "nginx", proc)
    return f"http://127.0.0.1:{port}", proc


@pytest.fixture(scope="module")
def stack(pg_server, template_database, tmp_path_factory):
    nginx_bin = tool("nginx", "DAGPG_NGINX")
    root = tmp_path_factory.mktemp("access")
    database = pg_server.create_database(template=template_database)
    home = pgharness.write_dagster_home(root / "dagster_home", pg_server.target(database))
    env = {"DAGSTER_HOME": str(home), pgharness.PASSWORD_VAR: pg_server.admin.password or ""}
    workspace = root / "workspace.yaml"
    workspace.write_text(f"load_from:\n  - python_file:\n      relative_path: {DEFINITIONS}\n"
                         "      attribute: defs\n")
    logs = root / "logs"
    procs: dict[str, subprocess.Popen] = {}
    cleanup: list[Path] = []
    try:
        viewer_port, admin_port = free_port(), free_port()
        procs["viewers"] = processes.start_webserver(home, viewer_port, logs, path_prefix=VIEWER,
                                                     env=env, workspace=workspace, read_only=True)
        procs["operators"] = processes.start_webserver(home, admin_port, logs, path_prefix=ADMIN,
                                                       env=env, workspace=workspace)
        procs["daemon"] = processes.start_daemon(home, logs, env=env, workspace=workspace)
        # nginx's workers (nobody, when started as root) must read it: a folder outside
        # pytest's private tree.
        public = Path(tempfile.mkdtemp(prefix="dagpg-access-"))
        cleanup.append(public)
        public.chmod(0o755)
        config = write_config(root, viewer_port=viewer_port, admin_port=admin_port,
                              htpasswd=write_htpasswd(public / "htpasswd"))
        origin, procs["nginx"] = render_and_start_nginx(root / "proxy", config, nginx_bin)
        for name, url in (("viewers", f"http://127.0.0.1:{viewer_port}{VIEWER}/server_info"),
                          ("operators", f"http://127.0.0.1:{admin_port}{ADMIN}/server_info")):
            processes.wait_for(lambda u=url: processes.http_json(u), 120, url, procs[name])
        s = Stack(root, {**env, "DAGPG_CONFIG": str(config)}, config, origin, viewer_port,
                  admin_port, procs)
        backup = CliRunner().invoke(cli, ["backup", "--dest", str(root / "backups"), "--silent"],
                                    env=s.env)
        assert backup.exit_code == 0, backup.output
        yield s
    finally:
        with ThreadPoolExecutor(max_workers=4) as pool:  # each waits for its own exit
            list(pool.map(processes.stop, procs.values()))
        for folder in cleanup:
            shutil.rmtree(folder, ignore_errors=True)
        pg_server.drop_database(database)


# --- the browser: one isolated context (own cookies and credentials) per tab ----------------

class Tab:
    """A Chromium tab in a browser context of its own, logged in as `user` (or nobody): the
    Authorization header a browser sends once the user has typed the password into its Basic
    authentication prompt, on every request of the tab, the WebSocket's included."""

    def __init__(self, browser: Browser, user: str | None):
        self.b = browser
        self.context = browser._send("Target.createBrowserContext")["browserContextId"]
        self.target = browser._send("Target.createTarget", {
            "url": "about:blank", "browserContextId": self.context})["targetId"]
        self.session = browser._send("Target.attachToTarget", {
            "targetId": self.target, "flatten": True})["sessionId"]
        self.events: list[dict] = []
        for method in ("Network.enable", "Page.enable"):
            self.send(method)
        if user:
            self.send("Network.setExtraHTTPHeaders", {"headers": {"Authorization": basic(user)}})

    def send(self, method: str, params: dict | None = None) -> dict:
        return self.b._send(method, params, self.session, self.events)

    def pump(self, seconds: float) -> None:
        self.b._pump(self.events, seconds)

    def goto(self, url: str) -> None:
        self.events.clear()
        self.url = url
        self.send("Page.navigate", {"url": url})

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        return result["result"].get("value")

    def text(self) -> str:
        return self.evaluate("document.body ? document.body.innerText : ''") or ""

    def wait_for(self, predicate, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.pump(0.5)
            value = predicate()
            if value:
                return value
        raise AssertionError(f"timed out after {timeout}s waiting for {what} at {self.url}; "
                             f"page text: {self.text()[:400]!r}")

    def wait_for_ui(self, ready: str, timeout: float = 60) -> None:
        """Dagster's UI is up: its GraphQL WebSocket was acknowledged and `ready` is shown."""
        self.wait_for(lambda: _acked(self.events) and ready in self.text()
                      and "Loading" not in self.text(), timeout, repr(ready))
        self.pump(1.5)  # lazy icons and fonts; the first-visit dialog
        self.evaluate(SKIP_DIALOG)
        self.pump(1)

    def screenshot(self, name: str) -> Path:
        png = self.send("Page.captureScreenshot", {"format": "png"})["data"]
        path = SCREENSHOTS / f"access-{name}.png"
        path.write_bytes(base64.b64decode(png))
        return path

    def visit(self, name: str):
        """What the tab saw since the last goto (responses, WebSockets, text, screenshot)."""
        return _visit(self.url, self.events, self.text(), self.screenshot(name))

    def close(self) -> None:
        self.b._send("Target.closeTarget", {"targetId": self.target})
        self.b._send("Target.disposeBrowserContext", {"browserContextId": self.context})


SKIP_DIALOG = """[...document.querySelectorAll('button')]
  .filter(b => b.innerText.trim() === 'Skip').forEach(b => b.click())"""


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium = tool("chromium", "DAGPG_CHROMIUM")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for old in SCREENSHOTS.glob("access-*.png"):
        old.unlink()
    b = Browser(chromium, tmp_path_factory.mktemp("chromium"), SCREENSHOTS)
    yield b
    b.close()


@contextlib.contextmanager
def tab(browser: Browser, user: str | None):
    t = Tab(browser, user)
    try:
        yield t
    finally:
        t.close()


BUTTONS = """[...document.querySelectorAll('button, a[role=button]')].map(b => ({
  text: b.innerText.trim(), disabled: b.disabled || b.getAttribute('aria-disabled') === 'true'}))
  .filter(b => b.text)"""


def document_status(t: Tab) -> int | None:
    for event in t.events:
        params = event.get("params", {})
        if event.get("method") == "Network.responseReceived" and params.get("type") == "Document":
            return params["response"]["status"]
    return None


@pytest.fixture(scope="module")
def views(stack, browser):
    """What each kind of user saw; the operator launches a run from the admin path's UI."""
    seen: dict[str, object] = {}
    with tab(browser, None) as t:
        for name, prefix in (("anonymous-viewer-path", VIEWER), ("anonymous-admin-path", ADMIN)):
            t.goto(stack.url(f"{prefix}/"))
            t.wait_for(lambda: document_status(t), 30, "the page's answer")
            t.pump(2)  # whatever the page would load next
            seen[name] = t.visit(name)
    with tab(browser, "viewer") as t:
        t.goto(stack.url(f"{VIEWER}/"))
        t.wait_for_ui("Timeline")
        seen["viewer"] = t.visit("viewer")
        t.goto(stack.url(f"{VIEWER}/assets/{ASSET}"))
        t.wait_for_ui("Latest materialization")
        seen["viewer-asset-buttons"] = t.evaluate(BUTTONS)
        seen["viewer-asset"] = t.visit("viewer-asset")
        t.goto(stack.url(f"{ADMIN}/"))
        t.wait_for(lambda: document_status(t), 30, "the admin path's answer")
        seen["viewer-admin-path"] = t.visit("viewer-admin-path")
    with tab(browser, "operator") as t:
        t.goto(stack.url(f"{ADMIN}/"))
        t.wait_for_ui("Timeline")
        seen["operator"] = t.visit("operator")
        t.goto(stack.url(f"{ADMIN}/assets/{ASSET}"))
        t.wait_for_ui("Latest materialization")
        seen["operator-asset-buttons"] = t.evaluate(BUTTONS)
        before = set(run_ids(stack))
        t.evaluate(CLICK_MATERIALIZE)
        seen["run_id"] = t.wait_for(lambda: next(iter(set(run_ids(stack)) - before), None),
                                    60, "the run the Materialize button launches")
        seen["operator-launched"] = t.visit("operator-launched")
    return seen


CLICK_MATERIALIZE = """[...document.querySelectorAll('button')]
  .filter(b => b.innerText.trim() === 'Materialize' && !b.disabled).forEach(b => b.click())"""
RUNS = "{ runsOrError { ... on Runs { results { runId status } } } }"


def run_ids(stack: Stack) -> list[str]:
    data = graphql(stack, ADMIN, "operator", RUNS)["data"]
    return [r["runId"] for r in data["runsOrError"]["results"]]


def run_status(stack: Stack, prefix: str, user: str, run_id: str) -> str | None:
    data = graphql(stack, prefix, user, RUNS)["data"]
    return next((r["status"] for r in data["runsOrError"]["results"] if r["runId"] == run_id),
                None)


def launch_run_mutation(stack: Stack, prefix: str, user: str) -> tuple[int, str]:
    location = graphql(stack, prefix, user, "{ workspaceOrError { ... on Workspace { "
                       "locationEntries { name } } } }")["data"]["workspaceOrError"]
    name = location["locationEntries"][0]["name"]
    return http(stack.url(f"{prefix}/graphql"), user=user, data={
        "query": "mutation($p: ExecutionParams!) { launchRun(executionParams: $p) { "
                 "__typename ... on UnauthorizedError { message } "
                 "... on LaunchRunSuccess { run { runId } } } }",
        "variables": {"p": {"selector": {"repositoryLocationName": name,
                                         "repositoryName": "__repository__", "jobName": JOB},
                            "runConfigData": {}}}})


# --- anonymous: nothing gets through ---------------------------------------------------------

@pytest.mark.parametrize("name", ["anonymous-viewer-path", "anonymous-admin-path"])
def test_anonymous_gets_401_and_nothing_else(views, name):
    visit = views[name]
    assert visit.responses == [(visit.url, 401)], visit.responses  # the page only, refused
    assert visit.websockets == {} and "Timeline" not in visit.text, visit.screenshot
    # Chromium asks for the login (headless: nobody answers) instead of showing nginx's page.
    assert visit.failures == [(visit.url, "net::ERR_INVALID_AUTH_CREDENTIALS")], visit.failures


def test_anonymous_requests_for_assets_graphql_and_websocket_are_refused(stack, views):
    asset = next(u for u, _ in views["viewer"].responses if f"{VIEWER}/_next/static/" in u)
    for url in (asset, stack.url(f"{VIEWER}/server_info"),
                stack.url(f"{ADMIN}/_next/static/chunks/webpack.js")):
        assert http(url)[0] == 401, url
    for prefix in (VIEWER, ADMIN):
        status, body = http(stack.url(f"{prefix}/graphql"), data={"query": RUNS})
        assert status == 401 and "runId" not in body
        with socket.create_connection(("127.0.0.1", int(stack.origin.rsplit(":", 1)[1]))) as s:
            s.sendall(f"GET {prefix}/graphql HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                      "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode())
            assert s.recv(64).startswith(b"HTTP/1.1 401 "), prefix


def test_a_wrong_password_and_a_user_in_no_list_are_refused(stack):
    for prefix in (VIEWER, ADMIN):
        request = urllib.request.Request(stack.url(f"{prefix}/server_info"), headers={
            "Authorization": "Basic " + base64.b64encode(b"operator:wrong").decode()})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(request, timeout=20)
        assert err.value.code == 401
        assert http(stack.url(f"{prefix}/server_info"), user="stranger")[0] == 403


# --- a viewer: the read-only UI, nothing to launch with ---------------------------------------

def test_a_viewer_sees_the_ui_at_the_viewer_path(views):
    visit = views["viewer"]
    assert "Overview" in visit.text and "Timeline" in visit.text, visit.screenshot
    assert visit.screenshot.stat().st_size > 20_000
    bad = [(u, s) for u, s in visit.responses if s >= 400]
    assert bad == [] and visit.failures == [], (bad, visit.failures)
    assert len([u for u, _ in visit.responses if f"{VIEWER}/_next/static/" in u]) >= 10


def test_a_viewers_materialize_button_is_disabled(views):
    buttons = {b["text"]: b["disabled"] for b in views["viewer-asset-buttons"]}
    assert buttons.get("Materialize") is True, (buttons, views["viewer-asset"].screenshot)
    # The same button is live for an operator: the difference is the webserver, not the page.
    operator = {b["text"]: b["disabled"] for b in views["operator-asset-buttons"]}
    assert operator.get("Materialize") is False, operator


def test_a_viewers_launch_run_mutation_is_refused(stack):
    status, body = launch_run_mutation(stack, VIEWER, "viewer")
    assert status == 200
    assert json.loads(body)["data"]["launchRun"]["__typename"] == "UnauthorizedError", body
    # ... and the viewer cannot take the operators' path to send it there.
    assert http(stack.url(f"{ADMIN}/graphql"), user="viewer", data={"query": RUNS})[0] == 403


def test_the_admin_path_answers_403_to_a_viewer(views):
    visit = views["viewer-admin-path"]
    # (Requests the previous page still had in flight show up too: only the admin path counts.)
    admin = [(u, s) for u, s in visit.responses if ADMIN in u]
    assert admin == [(visit.url, 403)], visit.responses
    assert "403 Forbidden" in visit.text, visit.screenshot
    assert not any(ADMIN in url for url in visit.websockets)


# --- an operator: launches at the admin path; viewers see the run -----------------------------

def test_an_operator_sees_the_ui_and_a_launched_run_succeeds(stack, views):
    visit = views["operator"]
    assert "Overview" in visit.text and "Timeline" in visit.text, visit.screenshot
    run_id = views["run_id"]
    status = processes.wait_for(
        lambda: (s := run_status(stack, ADMIN, "operator", run_id)) in (
            "SUCCESS", "FAILURE", "CANCELED") and s, 120, f"run {run_id} to finish")
    assert status == "SUCCESS", status


def test_the_operators_run_is_visible_at_the_viewer_path(stack, views, browser):
    run_id = views["run_id"]
    processes.wait_for(lambda: run_status(stack, VIEWER, "viewer", run_id) == "SUCCESS", 120,
                       f"run {run_id} as the viewer sees it")
    with tab(browser, "viewer") as t:
        t.goto(stack.url(f"{VIEWER}/runs/{run_id}"))
        t.wait_for_ui("Success")
        buttons = {b["text"]: b["disabled"] for b in t.evaluate(BUTTONS)}
        visit = t.visit("viewer-run")
    assert run_id[:8] in visit.text and "Success" in visit.text, visit.screenshot
    reexecute = [disabled for text, disabled in buttons.items() if text.startswith("Re-execute")]
    assert reexecute and all(reexecute), buttons  # the viewer cannot run it again


@pytest.mark.parametrize("name, prefix", [("viewer", VIEWER), ("operator", ADMIN)])
def test_the_graphql_websocket_connects_through_the_authenticated_proxy(stack, views, name,
                                                                        prefix):
    ws = views[name].websockets.get(stack.url(f"{prefix}/graphql").replace("http", "ws", 1))
    assert ws, views[name].websockets
    assert (ws["status"], ws["protocol"]) == (101, "graphql-ws")
    assert any('"connection_ack"' in frame for frame in ws["frames"]), ws["frames"]


# --- dagpg verify --public-url -----------------------------------------------------------------

def verify(stack: Stack, *args: str, config: Path | None = None, **env: str):
    result = CliRunner().invoke(cli, ["verify", "--json", *args], env={
        **stack.env, "DAGPG_CONFIG": str(config or stack.config), **env})
    report = json.loads(result.output) if result.output.startswith("{") else None
    return result, report, {c["name"]: c for c in (report or {}).get("checks", [])}


def test_verify_passes_through_the_authenticated_proxy(stack):
    result, report, checks = verify(stack, "--public-url", stack.url(VIEWER),
                                    "--public-user", "operator",
                                    DAGPG_PUBLIC_PASSWORD=USERS["operator"])
    assert result.exit_code == 0, result.output
    # Every check passes; no keeper runs here (tests/test_watch*.py), so its check warns.
    assert {c["name"]: c["status"] for c in report["checks"]
            if c["status"] != "ok"} == {"keeper.heartbeat": "warn"}, [
        (c["name"], c["status"], c["detail"]) for c in report["checks"] if c["status"] != "ok"]
    assert checks["access.anonymous"]["detail"] == (
        f"8 anonymous requests to {stack.url(VIEWER)} and {stack.url(ADMIN)} (page, "
        "server_info, GraphQL, WebSocket) answered 401")
    assert checks["access.read_only"]["detail"] == (
        f"http://127.0.0.1:{stack.viewer_port}{VIEWER} and {stack.url(VIEWER)} grant no "
        "permission (no launching, terminating, wiping); "
        f"http://127.0.0.1:{stack.admin_port}{ADMIN} grants launching")
    assert checks["access.loopback_only"]["status"] == "ok"
    # The operators' webserver, asked on its own port: it serves the database's instance.
    admin = f"http://127.0.0.1:{stack.admin_port}{ADMIN}"
    version = checks["webserver.server_info"]["data"]["dagster_version"]
    assert checks["admin_webserver.server_info"]["detail"] == (
        f"{admin}/server_info runs Dagster {version}")
    assert checks["admin_webserver.instance_id"]["detail"] == (
        checks["webserver.instance_id"]["detail"])
    # nginx passes compressed WebSocket frames: the probe asked as a browser does, and inflated.
    assert checks["public.websocket"]["detail"].endswith("compressed (permessage-deflate)")


def test_verify_without_a_login_checks_what_it_can(stack):
    result, report, checks = verify(stack, "--public-url", stack.url(VIEWER))
    assert result.exit_code == 0, result.output
    for name in ("public.server_info", "public.instance_id", "public.heartbeats",
                 "public.websocket"):
        assert checks[name]["status"] == "skip", checks[name]
    assert checks["public.server_info"]["detail"] == (
        f"{stack.url(VIEWER)} asks for a login (HTTP 401), as access control wants: give "
        "--public-user NAME (password in DAGPG_PUBLIC_PASSWORD) to check through it")
    assert [checks[n]["status"] for n in ("access.anonymous", "access.read_only",
                                         "access.loopback_only")] == ["ok", "ok", "ok"]


def test_verify_refuses_a_user_without_its_password(stack):
    result, _, _ = verify(stack, "--public-url", stack.url(VIEWER), "--public-user", "operator",
                          DAGPG_PUBLIC_PASSWORD="")
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == (
        "Error: --public-user operator: set DAGPG_PUBLIC_PASSWORD to its password (a password "
        "is never given on the command line)")


def test_verify_fails_a_proxy_that_lets_anonymous_users_through(stack, tmp_path):
    open_config = write_config(tmp_path / "open", viewer_port=stack.viewer_port,
                               admin_port=stack.admin_port, htpasswd=Path("unused"),
                               enabled=False)
    origin, proc = render_and_start_nginx(tmp_path / "open", open_config,
                                          tool("nginx", "DAGPG_NGINX"))
    try:
        result, _, checks = verify(stack, "--public-url", f"{origin}{VIEWER}")
    finally:
        processes.stop(proc)
    assert result.exit_code == 1
    check = checks["access.anonymous"]
    assert check["status"] == "fail"
    assert check["detail"].startswith(
        f"anonymous requests get through the proxy: GET {origin}{VIEWER}/ answered 200; "
        f"GET {origin}{VIEWER}/server_info answered 200; POST {origin}{VIEWER}/graphql "
        "answered 200; ")
    assert check["detail"].endswith("; turn on its authentication (dagpg render iis|nginx)")


def test_verify_fails_when_viewers_reach_the_full_webserver(stack, tmp_path):
    # A mix-up: the viewers' port is the full webserver's.
    swapped = write_config(tmp_path, viewer_port=stack.admin_port, admin_port=stack.viewer_port,
                           htpasswd=Path("unused"))
    text = swapped.read_text().replace(f"path_prefix: {VIEWER}", f"path_prefix: {ADMIN}")
    swapped.write_text(text.replace(f"admin_path_prefix: {ADMIN}",
                                    f"admin_path_prefix: {VIEWER}"))
    result, _, checks = verify(stack, "--public-url", stack.url(ADMIN), config=swapped)
    assert result.exit_code == 1
    assert checks["access.read_only"]["detail"].startswith(
        f"http://127.0.0.1:{stack.admin_port}{ADMIN} grants launch_pipeline_execution (and ")
    assert checks["access.read_only"]["detail"].endswith(
        "more): viewers can change things; start the viewers' webserver with --read-only "
        "(dagpg render servy) and point the proxy's viewer path at it")


def test_verify_fails_when_the_operators_webserver_is_down(stack, tmp_path):
    """Nobody could launch a run, turn a schedule on or re-execute: a failed check, naming the
    service, not a warning beside a healthy report."""
    down = free_port()  # nothing listens here: the operators' webserver is stopped
    config = write_config(tmp_path, viewer_port=stack.viewer_port, admin_port=down,
                          htpasswd=Path("unused"))
    result, _, checks = verify(stack, "--public-url", stack.url(VIEWER), config=config)
    assert result.exit_code == 1, result.output
    assert checks["admin_webserver.server_info"]["status"] == "fail"
    assert checks["admin_webserver.server_info"]["detail"].endswith(
        f"is dagster-webserver (DagsterWebserver) running on 127.0.0.1:{down}? check its "
        "stdout/stderr logs")
    assert checks["admin_webserver.instance_id"]["status"] == "skip"
    assert checks["webserver.instance_id"]["status"] == "ok"


def test_verify_fails_a_port_that_answers_beyond_loopback(stack):
    from dagpg.settings import load_settings
    from dagpg.verify.access import loopback_only

    settings = load_settings(stack.config)
    # The real webservers bind 127.0.0.1: 127.0.0.2 (standing in for the LAN address) is refused.
    assert loopback_only(settings, timeout=2).status == "ok"
    with socket.create_server(("0.0.0.0", 0)) as everywhere:  # -h 0.0.0.0, as the guide had it
        port = everywhere.getsockname()[1]
        result = loopback_only(settings, timeout=2, ports=(port,))
    assert result.status == "fail"
    assert result.detail.startswith(f"port {port} on 127.0.0.2 answers: a webserver listens "
                                    "beyond loopback, where anyone bypasses the proxy")


# --- WebSocket compression through (a stand-in for) IIS ARR ------------------------------------

@pytest.mark.parametrize("strip", [False, True])
def test_verify_sees_a_proxy_that_breaks_compressed_websockets(stack, tmp_path, strip):
    """ARR 3 forwards the browser's permessage-deflate offer and then breaks on compressed
    frames: verify asks for compression as a browser does and names the fix; with the rule
    `dagpg render iis` writes (the offer removed) it passes, uncompressed."""
    from tests.fake_arr import FakeArr

    arr = FakeArr(stack.viewer_port, strip_extensions=strip)
    # No login on this stand-in: only the WebSocket is under test here.
    config = write_config(tmp_path, viewer_port=stack.viewer_port, admin_port=stack.admin_port,
                          htpasswd=Path("unused"), enabled=False)
    try:
        result, _, checks = verify(stack, "--public-url", f"http://127.0.0.1:{arr.port}{VIEWER}",
                                   config=config)
    finally:
        arr.close()
    ws = checks["public.websocket"]
    if strip:
        assert ws["status"] == "ok", ws
        assert ws["detail"].endswith("uncompressed (no compression negotiated)")
        assert result.exit_code == 0, result.output
    else:
        assert ws["status"] == "fail"
        assert ws["detail"].startswith(
            f"ws://127.0.0.1:{arr.port}{VIEWER}/graphql: fails when the browser asks for "
            "compression (")
        assert ws["detail"].endswith(
            "and works without: the proxy breaks compressed WebSocket frames (IIS ARR 3 does); "
            "blank the Sec-WebSocket-Extensions request header in the rewrite rule (server "
            "variable HTTP_SEC_WEBSOCKET_EXTENSIONS, as `dagpg render iis` writes it)")
        assert result.exit_code == 1
