"""The interface every service manager implements, and what it answers with.

A manager knows services by name (`dagpg.services` in config.yml: the same names for Servy
services, systemd units and supervisord programs). The keeper asks it three things: can you
manage these services (`check`, at startup), is this one running (`status`), restart it
(`restart`). A failed restart is an answer, not an exception: the keeper logs it and goes on.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dagpg.errors import ConfigurationError

log = logging.getLogger(__name__)

RUNNING, STOPPED, STARTING = "running", "stopped", "starting"
MISSING, DENIED, UNKNOWN = "missing", "denied", "unknown"
COMMAND_TIMEOUT_S = 15.0
RESTART_TIMEOUT_S = 180.0  # Servy waits StopTimeout (30 s) before it kills; starting is quick


class ServiceManagerError(ConfigurationError):
    """The keeper cannot manage the configured services: nothing was attempted."""


@dataclass(frozen=True)
class ServiceState:
    name: str
    status: str  # running | stopped | starting | missing | denied | unknown
    detail: str  # the manager's own words, one line

    @property
    def running(self) -> bool:
        return self.status == RUNNING

    def as_dict(self) -> dict:
        return {"name": self.name, "status": self.status, "detail": self.detail}


@dataclass(frozen=True)
class RestartResult:
    name: str
    ok: bool
    command: str
    detail: str
    elapsed_s: float

    def as_dict(self) -> dict:
        return {"service": self.name, "ok": self.ok, "command": self.command,
                "detail": self.detail, "elapsed_s": round(self.elapsed_s, 2)}


@dataclass(frozen=True)
class Completed:
    returncode: int
    output: str  # stdout and stderr, stripped


class ServiceManager(ABC):
    """Restart and inspect services by name through one program (servy-cli, systemctl,
    supervisorctl), run with a timeout; its output is kept to one line for the log."""

    kind: str = ""
    program_setting: str = ""  # the dagpg.watch key naming the program
    permission_hint: str = "run the keeper as a user allowed to restart these services"
    # When the manager does not answer at all: what to do.
    unreachable_hint: str = ("is it what runs the services on this machine? otherwise set "
                             "dagpg.watch.service_manager (or --service-manager)")

    def __init__(self, program: str):
        self.program = program

    # -- what a manager implements -----------------------------------------------------

    @abstractmethod
    def restart_argv(self, name: str) -> list[str]:
        """The command line that restarts `name` (shown at startup, run by `restart`)."""

    @abstractmethod
    def status(self, name: str) -> ServiceState:
        """Whether `name` runs, as the manager sees it; never raises."""

    def check_permission(self) -> None:  # noqa: B027  (most managers answer through status)
        """Raise ServiceManagerError when this user may not restart services."""

    # -- shared ------------------------------------------------------------------------

    def describe(self, name: str) -> str:
        return " ".join(_quote(a) for a in self.restart_argv(name))

    def check(self, names: Sequence[str], hints: dict[str, str] | None = None) -> None:
        """At startup: the program exists, every service is known, restarting is allowed.
        `hints`: what else to say when a service is unknown (why the keeper expects it)."""
        self.executable()
        for name in names:
            state = self.status(name)
            if state.status == MISSING:
                hint = (hints or {}).get(name, "")
                raise ServiceManagerError(
                    f"{self.kind} does not know service {name!r} ({state.detail}); install it "
                    f"or fix dagpg.services in config.yml{'; ' + hint if hint else ''}")
            if state.status == DENIED:
                raise ServiceManagerError(
                    f"no permission to manage {name!r} through {self.kind}: {state.detail}; "
                    f"{self.permission_hint}")
            if state.status == UNKNOWN:
                raise ServiceManagerError(
                    f"cannot ask {self.kind} about service {name!r}: {state.detail}; "
                    f"{self.unreachable_hint}")
        self.check_permission()

    def restart(self, name: str) -> RestartResult:
        argv = self.restart_argv(name)
        started = time.monotonic()
        done = self.run(argv[1:], timeout=RESTART_TIMEOUT_S)
        ok = done.returncode == 0 and self.restart_succeeded(done.output)
        return RestartResult(name, ok, self.describe(name), _one_line(done.output) or
                             f"exit code {done.returncode}", time.monotonic() - started)

    def restart_succeeded(self, output: str) -> bool:
        return True

    def executable(self) -> str:
        """The program's path: as configured, on PATH, or beside this Python (a venv)."""
        found = shutil.which(self.program)
        if not found:
            beside = Path(sys.executable).parent / Path(self.program).name
            found = str(beside) if beside.is_file() and os.access(beside, os.X_OK) else None
        if not found:
            raise ServiceManagerError(
                f"{self.program} not found: install {self.kind}, or set "
                f"dagpg.watch.{self.program_setting} in config.yml to its path")
        return found

    def run(self, args: Sequence[str], *, timeout: float = COMMAND_TIMEOUT_S) -> Completed:
        """Run the program; a timeout or a missing program is an exit code and a message.
        The child gets our environment (no secret goes on its command line)."""
        try:
            argv = [self.executable(), *args]
        except ServiceManagerError as exc:
            return Completed(127, str(exc))
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL, errors="replace")
        except subprocess.TimeoutExpired:
            return Completed(124, f"{' '.join(argv)} did not finish within {timeout:g} s")
        except OSError as exc:
            return Completed(126, f"cannot run {argv[0]}: {exc.strerror}")
        output = "\n".join(p.strip() for p in (proc.stdout, proc.stderr) if p and p.strip())
        log.debug("%s -> %s: %s", argv, proc.returncode, output)
        return Completed(proc.returncode, output)


def _one_line(text: str) -> str:
    return " / ".join(line.strip() for line in text.strip().splitlines() if line.strip())[:500]


def _quote(arg: str) -> str:
    return f'"{arg}"' if (" " in arg or not arg) else arg
