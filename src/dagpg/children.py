"""Child processes that die with their parent, and write private files from their first byte.

A killed `dagpg` must not leave pg_dump writing a dump nobody will finish, or a migration's
helper process writing to a pipe nobody reads. Whoever kills the parent (SIGKILL, the OOM
killer, a service manager, a closed terminal), the children go too:

- Linux: the child asks the kernel for SIGKILL when its parent dies (`prctl(PR_SET_PDEATHSIG)`,
  set between fork and exec; prctl(2)). The signal follows the *thread* that started the child,
  so start children from a thread that outlives them (every caller here waits for its child).
- Windows: every child is put in one job object of this process, created with
  JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE; the system closes the job's last handle when this process
  ends, however it ends, and that terminates every process in the job.
- Python children of the kit (the migration's helpers) also watch their parent themselves
  (`watch_parent`), which covers macOS and a parent that dies before the kernel knows of the
  request.

A long-running server must not be started this way (`dagpg db up` starts PostgreSQL with
pg_ctl, which outlives the command on purpose).
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def popen(argv: list[str], *, umask: int | None = None, **kwargs) -> subprocess.Popen:
    """subprocess.Popen(argv, **kwargs) for a child that dies with this process.

    `umask`: the child's file-creation mask (0o077: every file it creates is private from its
    first byte, whatever it does with it afterwards).
    """
    preexec = _preexec(umask)
    if preexec is not None:
        kwargs["preexec_fn"] = preexec
    proc = subprocess.Popen(argv, **kwargs)
    if sys.platform == "win32":
        _windows_job().add(proc)
    return proc


def send(proc: subprocess.Popen, data: bytes) -> None:
    """Write `data` to the child's stdin and close it. A child that died first (killed, out of
    memory) makes this a broken pipe: ignored here, the caller learns of the death, with its
    exit code, when it reads the child's output. (Unhandled, the EPIPE would reach click, which
    exits 1 without a word.)"""
    try:
        proc.stdin.write(data)
        proc.stdin.close()
    except BrokenPipeError:
        try:
            proc.stdin.close()
        except BrokenPipeError:
            pass


class JsonChild:
    """`python -m module` as a child: one JSON job on its stdin, one JSON document on its
    stdout (the migration's and the upgrade's event readers)."""

    def __init__(self, module: str, job: str):
        self._process = popen([sys.executable, "-m", module], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE)
        send(self._process, job.encode("utf-8"))

    def output(self) -> tuple[int, Any]:
        """Wait for the child: (its exit code, its document, or None when it wrote none)."""
        text = self._process.stdout.read()
        code = self._process.wait()
        try:
            return code, json.loads(text)
        except ValueError:
            return code, None

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait(timeout=30)
        self._process.stdout.close()


def run(argv: list[str], *, timeout: float | None = None, umask: int | None = None,
        **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run for a child that dies with this process (`capture_output` as there)."""
    if kwargs.pop("capture_output", False):
        kwargs["stdout"] = kwargs["stderr"] = subprocess.PIPE
    with popen(argv, umask=umask, **kwargs) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)


def watch_parent(interval_s: float = 0.5) -> None:
    """In a child: exit at once when the process that started it is gone (POSIX: the child is
    re-parented, so its parent id changes). Runs in a daemon thread."""
    if os.name != "posix":
        return  # the job object of the parent (see popen) ends the child on Windows
    parent = os.getppid()
    if parent == 1:
        os._exit(1)

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(1)
            threading.Event().wait(interval_s)

    threading.Thread(target=watch, name="dagpg-watch-parent", daemon=True).start()


# -- POSIX --------------------------------------------------------------------------------------
def _preexec(umask: int | None) -> Callable[[], None] | None:
    if os.name != "posix":
        return None
    prctl = _linux_prctl()
    parent = os.getpid()

    def in_child() -> None:
        # Between fork and exec: only async-signal-safe work (a system call or two).
        if umask is not None:
            os.umask(umask)
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != parent:  # the parent died before the request took effect
                os._exit(1)

    return in_child


_PRCTL = None


def _linux_prctl():
    """libc's prctl, looked up once in the parent (never between fork and exec)."""
    if not sys.platform.startswith("linux"):
        return None
    global _PRCTL
    if _PRCTL is None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            prctl = libc.prctl
            prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                              ctypes.c_ulong]
            prctl.restype = ctypes.c_int
            _PRCTL = prctl
        except (OSError, AttributeError):
            log.warning("prctl is not available: children will not die with dagpg")
            _PRCTL = False
    return _PRCTL or None


# -- Windows ------------------------------------------------------------------------------------
# Documented at https://learn.microsoft.com/en-us/windows/win32/api/jobapi2/ (CreateJobObjectW,
# SetInformationJobObject, AssignProcessToJobObject) and .../api/winnt/ns-winnt-
# jobobject_basic_limit_information, ns-winnt-jobobject_extended_limit_information,
# ns-winnt-io_counters (the structures below follow those declarations field by field).
JOB_OBJECT_EXTENDED_LIMIT_INFORMATION_CLASS = 9  # JobObjectExtendedLimitInformation
JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE = 0x00002000


class IO_COUNTERS(ctypes.Structure):  # noqa: N801  (the Windows name)
    _fields_ = [(name, ctypes.c_ulonglong) for name in (
        "ReadOperationCount", "WriteOperationCount", "OtherOperationCount",
        "ReadTransferCount", "WriteTransferCount", "OtherTransferCount")]


class JOBOBJECT_BASIC_LIMIT_INFORMATION(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("PerProcessUserTimeLimit", ctypes.c_int64),  # LARGE_INTEGER
        ("PerJobUserTimeLimit", ctypes.c_int64),
        ("LimitFlags", ctypes.c_uint32),              # DWORD
        ("MinimumWorkingSetSize", ctypes.c_size_t),   # SIZE_T
        ("MaximumWorkingSetSize", ctypes.c_size_t),
        ("ActiveProcessLimit", ctypes.c_uint32),
        ("Affinity", ctypes.c_size_t),                # ULONG_PTR
        ("PriorityClass", ctypes.c_uint32),
        ("SchedulingClass", ctypes.c_uint32),
    ]


class JOBOBJECT_EXTENDED_LIMIT_INFORMATION(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("BasicLimitInformation", JOBOBJECT_BASIC_LIMIT_INFORMATION),
        ("IoInfo", IO_COUNTERS),
        ("ProcessMemoryLimit", ctypes.c_size_t),
        ("JobMemoryLimit", ctypes.c_size_t),
        ("PeakProcessMemoryUsed", ctypes.c_size_t),
        ("PeakJobMemoryUsed", ctypes.c_size_t),
    ]


class _WindowsJob:
    """One job object per dagpg process; its handle is never closed by us, so it closes when
    the process ends, and KILL_ON_JOB_CLOSE then terminates the children in it."""

    def __init__(self) -> None:
        self.handle = None
        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
        kernel32.CreateJobObjectW.restype = ctypes.c_void_p
        kernel32.CreateJobObjectW.argtypes = [ctypes.c_void_p, ctypes.c_wchar_p]
        kernel32.SetInformationJobObject.argtypes = [ctypes.c_void_p, ctypes.c_int,
                                                     ctypes.c_void_p, ctypes.c_uint32]
        kernel32.AssignProcessToJobObject.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        self.kernel32 = kernel32
        handle = kernel32.CreateJobObjectW(None, None)
        if not handle:
            log.warning("CreateJobObjectW failed (error %s): children will not die with "
                        "dagpg", ctypes.get_last_error())  # type: ignore[attr-defined]
            return
        info = JOBOBJECT_EXTENDED_LIMIT_INFORMATION()
        info.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE
        if not kernel32.SetInformationJobObject(handle, JOB_OBJECT_EXTENDED_LIMIT_INFORMATION_CLASS,
                                                ctypes.byref(info), ctypes.sizeof(info)):
            log.warning("SetInformationJobObject failed (error %s): children will not die with "
                        "dagpg", ctypes.get_last_error())  # type: ignore[attr-defined]
            return
        self.handle = handle

    def add(self, proc: subprocess.Popen) -> None:
        if self.handle is None:
            return
        # Popen keeps the process handle in _handle (CreateProcess's hProcess).
        if not self.kernel32.AssignProcessToJobObject(self.handle, int(proc._handle)):  # type: ignore[attr-defined]
            log.warning("AssignProcessToJobObject failed (error %s) for %s",
                        ctypes.get_last_error(), proc.args)  # type: ignore[attr-defined]


_JOB: _WindowsJob | None = None
_JOB_LOCK = threading.Lock()


def _windows_job() -> _WindowsJob:
    global _JOB
    with _JOB_LOCK:
        if _JOB is None:
            _JOB = _WindowsJob()
        return _JOB
