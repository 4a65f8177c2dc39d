"""Real faults at chosen moments: a process SIGKILLed while PostgreSQL holds it at a known point.

The moment is chosen with a lock, not a timer: the test holds an uncommitted `CREATE TABLE t`,
so the process under test, creating `t` too (Dagster creating its schema), waits inside that
statement; the test sees it waiting in pg_stat_activity and kills it there. The database is set
to notice a vanished client within 100 ms (`client_connection_check_interval`), so the killed
process's session ends as it would on its own, instead of finishing the statement later.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg2
from psycopg2 import sql

from dagpg import pg
from tests import processes


def notice_dead_clients(target) -> None:
    with pg.connection(target, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("ALTER DATABASE {} SET client_connection_check_interval = 100")
                    .format(sql.Identifier(target.database)))


@contextlib.contextmanager
def creation_blocked(target, table: str) -> Iterator[None]:
    """While inside, anyone else's CREATE TABLE `table` in `target` waits."""
    conn = pg.connect(target)
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("CREATE TABLE {} (blocker integer)").format(
                sql.Identifier(table)))
        yield
    finally:
        with contextlib.suppress(psycopg2.Error):  # the server may have been stopped meanwhile
            conn.rollback()
        conn.close()


def waiting_sessions(target, statement: str) -> list[int]:
    """Backends of `target` waiting on a lock in a statement containing `statement`."""
    with pg.connection(target, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> "
                    "pg_backend_pid() AND wait_event_type = 'Lock' AND query LIKE %s",
                    (target.database, f"%{statement}%"))
        return [r[0] for r in cur.fetchall()]


def sessions_alive(target, pids: list[int]) -> list[int]:
    with pg.connection(target, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("SELECT pid FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,))
        return [r[0] for r in cur.fetchall()]


def kill_while_creating(proc: subprocess.Popen, target, table: str,
                        timeout: float = 180) -> None:
    """SIGKILL `proc` once it waits inside CREATE TABLE `table` (see creation_blocked), then
    wait for its database session to end."""
    pids = processes.wait_for(lambda: waiting_sessions(target, f"CREATE TABLE {table}"),
                              timeout=timeout, what=f"CREATE TABLE {table} to wait", proc=proc)
    proc.kill()
    proc.wait(30)
    processes.wait_for(lambda: not sessions_alive(target, pids), timeout=60,
                       what="the killed process's session to end")


def stop_immediately(cluster) -> None:
    """`pg_ctl stop -m immediate`: every server process quits at once, as in a crash."""
    from dagpg.localdb import _server_user

    subprocess.run([cluster._program("pg_ctl"), "stop", "-D", str(cluster.data_dir), "-m",
                    "immediate", "-w"], user=_server_user(), cwd="/", check=True,
                   capture_output=True, timeout=120)


def children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting to be reaped does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def sigkill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
