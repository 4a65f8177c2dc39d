"""Real dagster-webserver and dagster-daemon processes for integration tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[1]
WORKSPACE = PROJECT_DIR / "dagster_home" / "workspace.yaml"
BIN = Path(sys.executable).parent


def _env(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["DAGSTER_HOME"] = str(home)
    env.update(extra or {})
    return env


def start_webserver(home: Path, port: int, log_dir: Path, *, path_prefix: str = "",
                    env: dict[str, str] | None = None, workspace: Path = WORKSPACE,
                    read_only: bool = False) -> subprocess.Popen:
    argv = [str(BIN / "dagster-webserver"), "-w", str(workspace), "-h", "127.0.0.1",
            "-p", str(port)]
    if path_prefix:
        argv += ["--path-prefix", path_prefix]
    if read_only:
        argv += ["--read-only"]
    return _spawn(argv, home, log_dir / f"webserver-{port}.log", env)


def start_daemon(home: Path, log_dir: Path, *, env: dict[str, str] | None = None,
                 workspace: Path = WORKSPACE) -> subprocess.Popen:
    argv = [str(BIN / "dagster-daemon"), "run", "-w", str(workspace)]
    return _spawn(argv, home, log_dir / "daemon.log", env)


def _spawn(argv, home, log_path: Path, env) -> subprocess.Popen:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("wb")
    proc = subprocess.Popen(argv, env=_env(home, env), stdout=log, stderr=subprocess.STDOUT,
                            cwd=PROJECT_DIR, start_new_session=True)
    proc.log_path = log_path  # type: ignore[attr-defined]
    return proc


def stop(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM the process group, then SIGKILL what is left."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(5)


def wait_for(predicate: Callable[[], object], timeout: float, what: str,
             proc: subprocess.Popen | None = None, interval: float = 0.25):
    """Poll `predicate` until it returns something truthy; fail with the process log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: process exited ({proc.returncode}):\n{tail(proc)}")
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n"
                         + (tail(proc) if proc else ""))


def tail(proc: subprocess.Popen, lines: int = 40) -> str:
    path = getattr(proc, "log_path", None)
    if not path or not Path(path).exists():
        return ""
    return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])


def http_json(url: str, timeout: float = 2) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return json.loads(resp.read())
    except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
        return None
