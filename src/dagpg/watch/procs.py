"""Is a process id still the process it was? Its start time says.

A run worker's process id comes from the run's events; when the worker is gone the id may
already belong to another process. So a pid counts as the run's worker only while a process
with that id exists, is a Python interpreter (every run worker is), and started no later than
the event that named it, plus CLOCK_SLACK_S. The slack is wide on purpose: start times are
computed from the boot time, and a wall clock stepped forward after the worker started would
otherwise make a live worker look younger than its own event, and the keeper must never fail a
live run. (A reused id that also belongs to a Python process started within the slack is
missed: that run stays until the process exits, the next pass after that ends it.)

Linux: /proc/<pid>/stat field 22 (start time in clock ticks after boot) plus btime from
/proc/stat; a zombie counts as gone. Windows and macOS: psutil (Process.create_time(),
boot_time()), a dependency on those platforms. Without either, `started_at` answers None
("cannot tell") and the keeper only trusts the boot-time comparison.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

CLOCK_SLACK_S = 30.0
GONE, ALIVE, UNKNOWN = "gone", "alive", "unknown"


def boot_time() -> float:
    """When this machine booted (seconds since the epoch)."""
    if sys.platform.startswith("linux"):
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    import psutil

    return float(psutil.boot_time())


def started_at(pid: int) -> float | None:
    """When process `pid` started (epoch seconds); None when there is no such (live) process.
    Raises LookupError when this platform cannot tell."""
    if pid <= 0:
        return None
    if sys.platform.startswith("linux"):
        try:
            raw = Path(f"/proc/{pid}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            return None
        # comm (field 2) is in parentheses and may hold spaces: split after the last ')'.
        fields = raw[raw.rindex(")") + 2:].split()
        if fields[0] in ("Z", "X"):  # zombie or dead: the process has exited
            return None
        ticks = int(fields[19])  # field 22 overall
        return boot_time() + ticks / os.sysconf("SC_CLK_TCK")
    try:
        import psutil
    except ImportError:
        raise LookupError("psutil is not installed: cannot read process start times") from None
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return float(proc.create_time())
    except psutil.NoSuchProcess:
        return None


def is_python(pid: int) -> bool | None:
    """Whether process `pid` runs a Python interpreter; None when that cannot be read."""
    try:
        if sys.platform.startswith("linux"):
            name = Path(os.readlink(f"/proc/{pid}/exe")).name
        else:
            import psutil

            name = psutil.Process(pid).name()
    except Exception:  # noqa: BLE001  (gone meanwhile, no permission, no psutil)
        return None
    return name.lower().startswith(("python", "pythonw"))


def identity(pid: int, named_at: float) -> str:
    """ALIVE when `pid` is the process an event named at `named_at` (epoch seconds), GONE when
    no such process runs or the id now belongs to another program or a younger process,
    UNKNOWN when this platform cannot tell."""
    try:
        start = started_at(pid)
    except LookupError:
        return UNKNOWN
    if start is None or start > named_at + CLOCK_SLACK_S or is_python(pid) is False:
        return GONE
    return ALIVE


_LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1", "")


def code_server_gone(info: dict) -> bool | None:
    """Whether the code server a run was launched through (Dagster's `.dagster/grpc_info` tag:
    host and port, or a unix socket) is gone: nothing accepts a connection there any more.
    None when it cannot be told from here (another host, no address). Something else that
    listens at that address counts as the code server: the keeper errs on the side of a live
    run."""
    host = str(info.get("host") or "")
    if host not in (*_LOCAL_HOSTS, socket.gethostname()):
        return None
    if info.get("socket"):
        if not hasattr(socket, "AF_UNIX"):
            return None
        address, family = str(info["socket"]), socket.AF_UNIX
    elif info.get("port"):
        address, family = (host or "localhost", int(info["port"])), None
    else:
        return None
    try:
        if family is None:
            socket.create_connection(address, timeout=5).close()
        else:
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.settimeout(5)
                sock.connect(address)
    except (ConnectionRefusedError, FileNotFoundError):
        return True
    except OSError:
        return None  # a timeout, no route: cannot tell
    return False
