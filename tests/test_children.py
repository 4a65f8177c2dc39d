"""dagpg.children: a child dies with its parent, and its files are private from the first byte."""

from __future__ import annotations

import ctypes
import stat
import subprocess
import sys
import textwrap

import pytest

from dagpg import children
from tests import faults, processes


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG)")
def test_a_child_dies_when_its_parent_is_killed(tmp_path):
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, time
        from dagpg import children
        child = children.popen(["sleep", "300"])
        print(child.pid, flush=True)
        time.sleep(300)
    """)], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    assert faults.alive(child)
    faults.sigkill(parent.pid)
    parent.wait(30)
    processes.wait_for(lambda: not faults.alive(child), timeout=10,
                       what="the child to die with its parent")


def test_umask_makes_the_childs_files_private(tmp_path):
    made = tmp_path / "made-by-child"
    result = children.run(["sh", "-c", f"echo secret > '{made}'"], umask=0o077,
                          capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(made.stat().st_mode) == 0o600


@pytest.mark.skipif(ctypes.sizeof(ctypes.c_void_p) != 8, reason="sizes documented for x64")
def test_the_windows_job_structures_have_their_documented_x64_sizes():
    """The structures passed to SetInformationJobObject cannot be tried here (no Windows); their
    layout can: sizeof on x64 per winnt.h, 64 + 48 + 4 * 8 bytes."""
    assert ctypes.sizeof(children.JOBOBJECT_BASIC_LIMIT_INFORMATION) == 64
    assert ctypes.sizeof(children.IO_COUNTERS) == 48
    assert ctypes.sizeof(children.JOBOBJECT_EXTENDED_LIMIT_INFORMATION) == 144
    assert children.JOBOBJECT_BASIC_LIMIT_INFORMATION.LimitFlags.offset == 16


def test_a_job_sent_to_a_child_that_already_died_is_no_broken_pipe():
    """Writing to a dead child's stdin raises BrokenPipeError (EPIPE), which click turns into a
    silent exit 1; `send` leaves the death to be reported when the child's output is read."""
    proc = children.popen([sys.executable, "-c", "import os; os._exit(9)"],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.wait(30) == 9
    with pytest.raises(BrokenPipeError):  # what happened before `send`
        raw = subprocess.Popen([sys.executable, "-c", "import os; os._exit(9)"],
                               stdin=subprocess.PIPE)
        raw.wait(30)
        raw.stdin.write(b"x" * (1 << 20))
        raw.stdin.flush()
    raw.stdin = None  # its pipe is broken; nothing left to close
    children.send(proc, b"x" * (1 << 20))  # no exception
    assert proc.stdin.closed and proc.stdout.read() == b""


def test_a_pump_whose_child_died_first_is_one_line_with_the_exit_code(tmp_path, monkeypatch):
    """The migration's event-rendering child, dead before its job arrives: the error names its
    exit code, as every other early death does."""
    from dagpg.migrate import pump
    from dagpg.migrate.errors import CopyProcessError

    started = []
    real_popen = children.popen

    def dead_on_arrival(argv, **kwargs):  # the real child, killed before the job is written
        proc = real_popen(argv, **kwargs)
        proc.kill()
        proc.wait(30)
        started.append(proc)
        return proc

    monkeypatch.setattr(children, "popen", dead_on_arrival)

    class Job:
        def to_json(self) -> str:
            return "x" * (1 << 20)  # larger than a pipe's buffer: the write fails

    with pytest.raises(CopyProcessError) as caught:
        list(pump.Pump(Job()).units())
    assert started and str(caught.value) == (
        "the event-rendering process ended early (exit code -9); run the command again")
