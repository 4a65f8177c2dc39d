"""Is a process id still the process it was? Its start time says.

A run worker's process id comes from the run's events; when the worker is gone the id may
already belong to another process. So a pid counts as the run's worker only while a process
with that id exists and started no later than the event that named it (plus CLOCK_SLACK_S,
the precision of the boot time the start is computed from).

Linux: /proc/<pid>/stat field 22 (start time in clock ticks after boot) plus btime from
/proc/stat; a zombie counts as gone. Windows and macOS: psutil (Process.create_time(),
boot_time()), a dependency on those platforms. Without either, `started_at` answers None
("cannot tell") and the keeper only trusts the boot-time comparison.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

CLOCK_SLACK_S = 2.0
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


def identity(pid: int, named_at: float) -> str:
    """ALIVE when `pid` is the process an event named at `named_at` (epoch seconds), GONE when
    no such process runs or the id now belongs to a younger process, UNKNOWN when this platform
    cannot tell."""
    try:
        start = started_at(pid)
    except LookupError:
        return UNKNOWN
    if start is None or start > named_at + CLOCK_SLACK_S:
        return GONE
    return ALIVE
