"""A real supervisord for the keeper's tests (standing in for Servy): a generated config with
a unix socket under the test's folder, programs that run in supervisord's session.

supervisord puts each program in its own process group (so killasgroup reaches the daemon's
code server and run workers) but not in its own session: everything it starts, and everything
those start, shares the session supervisord was started in (`start_new_session`). `kill_all`
SIGKILLs that whole session, which is how the tests stage a reboot and how they clean up even
when a test fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent


@dataclass
class Program:
    command: str
    environment: dict[str, str] = field(default_factory=dict)
    autostart: bool = True
    autorestart: bool = True
    startsecs: int = 1
    stopwaitsecs: int = 5
    directory: str | None = None


class Supervisor:
    def __init__(self, root: Path, programs: dict[str, Program], *, auth: bool = False):
        self.root = root
        self.programs = programs
        self.config = root / "supervisord.conf"
        self.socket = root / "supervisor.sock"
        self.proc: subprocess.Popen | None = None
        root.mkdir(parents=True, exist_ok=True)
        self.config.write_text(self._render(auth), encoding="utf-8")

    def _render(self, auth: bool) -> str:
        lines = [
            "[unix_http_server]", f"file={self.socket}", "chmod=0700",
            *(["username=admin", "password=not-the-keepers"] if auth else []),
            "[supervisord]", f"logfile={self.root / 'supervisord.log'}",
            f"pidfile={self.root / 'supervisord.pid'}", f"childlogdir={self.root}",
            "nodaemon=true", *(["user=root"] if os.geteuid() == 0 else []),
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
            "[supervisorctl]", f"serverurl=unix://{self.socket}",
        ]
        for name, p in self.programs.items():
            env = ",".join(f'{k}="{v}"' for k, v in p.environment.items())
            lines += [
                f"[program:{name}]", f"command={p.command}",
                f"autostart={str(p.autostart).lower()}",
                f"autorestart={str(p.autorestart).lower()}",
                f"startsecs={p.startsecs}", f"stopwaitsecs={p.stopwaitsecs}",
                # A restart ends the whole tree (code server, run workers), as Servy's does.
                "stopasgroup=true", "killasgroup=true", "redirect_stderr=true",
                f"stdout_logfile={self.root / (name + '.log')}",
                f"directory={p.directory or self.root}",
                *([f"environment={env}"] if env else []),
            ]
        return "\n".join(lines) + "\n"

    def start(self, env: dict[str, str] | None = None) -> Supervisor:
        """Start supervisord; `env` (e.g. the PostgreSQL password) reaches its programs through
        its environment, never through its config file."""
        log = (self.root / "supervisord.out").open("ab")
        self.proc = subprocess.Popen([str(BIN / "supervisord"), "-c", str(self.config)],
                                     stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True, env={**os.environ, **(env or {})})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            answer = self.ctl("status")
            if answer.returncode in (0, 3) or "authentication" in answer.stdout:
                return self
            if self.proc.poll() is not None:
                raise AssertionError(f"supervisord exited:\n{self.tail('supervisord.log')}")
            time.sleep(0.2)
        raise AssertionError("supervisord did not answer within 30 s")

    @property
    def session(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def ctl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "supervisorctl"), "-c", str(self.config), *args],
                              capture_output=True, text=True, timeout=120)

    def pid(self, name: str) -> int:
        out = self.ctl("pid", name).stdout.strip()
        return int(out) if out.isdigit() else 0

    def state(self, name: str) -> str:
        words = self.ctl("status", name).stdout.split()
        return words[1] if len(words) > 1 else ""

    def wait_state(self, name: str, state: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.state(name) == state:
                return
            time.sleep(0.3)
        raise AssertionError(f"{name} not {state} after {timeout} s: {self.state(name)}\n"
                             f"{self.tail(name + '.log')}")

    def tail(self, name: str, lines: int = 40) -> str:
        path = self.root / name
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def kill_all(self) -> list[int]:
        """SIGKILL every process of supervisord's session (supervisord, its programs and their
        children), frozen first so that nothing forks meanwhile. Returns the pids."""
        pids = session_pids(self.session)
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        if self.proc is not None:
            self.proc.wait(10)
        deadline = time.monotonic() + 10
        while session_pids(self.session) and time.monotonic() < deadline:
            time.sleep(0.1)
        return pids


def session_pids(sid: int) -> list[int]:
    """Live processes whose session id is `sid` (field 6 of /proc/<pid>/stat)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2:].split()
        if int(fields[3]) == sid and fields[0] not in ("Z", "X"):
            found.append(int(entry.name))
    return found
