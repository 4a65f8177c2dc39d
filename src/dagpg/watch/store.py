"""What the keeper keeps in the instance's database (schema `dagpg`, revision 0002_keeper):
the advisory lock that lets one keeper act, its heartbeat row, and the actions it took.

The lock is session-level on a connection of its own, held while the keeper runs: PostgreSQL
releases it when that connection ends (the keeper died, or the server restarted), and another
keeper then takes over at its next pass.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
import time
from datetime import UTC, datetime
from typing import Any

import psycopg2

from dagpg import pg
from dagpg.errors import DatabaseError
from dagpg.instance import Instance
from dagpg.verify.keeper import KEEPER_TABLE, KeeperRow, read_keepers  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

LOCK_KEY = 7_160_011  # beside schema.py's 7_160_001, migrate's _004 and backup's _005
ACTIONS_TABLE = "dagpg.keeper_actions"
APP = "dagpg watch"  # application_name of the lock's session: "dagpg watch HOST PID"


def _database_errors(method):
    """psycopg2's errors (a dropped connection, a missing table) as one-line DatabaseErrors:
    the keeper reports them as findings and tries again next pass."""
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except psycopg2.Error as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            if "dagpg.keeper" in first:
                first += "; run `dagpg db upgrade`"
            raise DatabaseError(first) from None
    return wrapper


def this_host() -> str:
    return socket.gethostname()


class Store:
    """The keeper's connection to its database; every call reconnects after a failure."""

    def __init__(self, instance: Instance, *, timeout: float = 5.0):
        self.instance = instance
        self.timeout = timeout
        self.host = this_host()
        self.pid = os.getpid()
        self._lock_conn = None
        self.took_over: str | None = None

    # -- the lock ----------------------------------------------------------------------

    @_database_errors
    def hold_lock(self) -> bool:
        """True while this process holds the keeper lock (taken now if free, or taken over
        from a keeper of this host that no longer runs; `took_over` then says whose)."""
        self.took_over = None
        if self._lock_conn is not None:
            try:
                with self._lock_conn.cursor() as cur:
                    cur.execute("SELECT 1")
                return True
            except Exception:  # noqa: BLE001  (the connection died: the lock went with it)
                self._drop_lock_conn()
        conn = pg.connect(self.instance.target, retries=0, timeout=self.timeout,
                          autocommit=True)
        try:
            with conn.cursor() as cur:
                # Who holds the lock is visible to every keeper (pg_stat_activity).
                cur.execute("SET application_name = %s", (f"{APP} {self.host} {self.pid}",))
                if self._try_lock(cur) or self._take_over(cur):
                    self._lock_conn, conn = conn, None
                    return True
            return False
        finally:
            if conn is not None:
                conn.close()

    def _try_lock(self, cur) -> bool:
        cur.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,))
        return bool(cur.fetchone()[0])

    def _take_over(self, cur) -> bool:
        """A keeper killed with its machine (a reboot) can leave its database session, and the
        lock, behind until the server notices the dead connection (TCP keepalive: hours). When
        the holder is a keeper of this host whose process is gone, end its session."""
        cur.execute("SELECT a.pid, a.application_name, a.backend_start FROM pg_locks l "
                    "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' "
                    "AND l.objid = %s AND l.granted", (LOCK_KEY,))
        row = cur.fetchone()
        if not row or not (row[1] or "").startswith(APP + " "):
            return False
        backend, app, backend_start = row
        _, host, pid = app.rsplit(" ", 2)
        if host != self.host or not pid.isdigit():
            return False
        from dagpg.watch import procs

        if procs.identity(int(pid), backend_start.timestamp()) != procs.GONE:
            return False
        cur.execute("SELECT pg_terminate_backend(%s)", (backend,))
        for _ in range(50):  # the lock goes when that backend has exited
            if self._try_lock(cur):
                self.took_over = (f"keeper pid {pid} on {host} no longer runs; its database "
                                  f"session {backend} (since {backend_start:%Y-%m-%d %H:%M:%S}) "
                                  "held the lock and was ended")
                return True
            time.sleep(0.1)
        return False

    @_database_errors
    def lock_holder(self) -> str:
        """Who holds the lock, as PostgreSQL sees it (for the standby message)."""
        with pg.connection(self.instance.target, retries=0, timeout=self.timeout) as conn, \
                conn.cursor() as cur:
            cur.execute(
                "SELECT a.pid, a.client_addr, a.application_name, a.backend_start "
                "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.objid = %s AND l.granted",
                (LOCK_KEY,))
            row = cur.fetchone()
            cur.execute(f"SELECT host, pid, last_pass_at FROM {KEEPER_TABLE} "  # noqa: S608
                        "ORDER BY last_pass_at DESC LIMIT 1")
            keeper = cur.fetchone()
        if not row:
            return "nobody (it was just released)"
        since = row[3].astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        who = f"keeper pid {keeper[1]} on {keeper[0]}" if keeper else "another keeper"
        return f"{who} (database session {row[0]} from {row[1] or 'local socket'} since {since})"

    def release(self) -> None:
        self._drop_lock_conn()

    def _drop_lock_conn(self) -> None:
        if self._lock_conn is not None:
            try:
                self._lock_conn.close()
            except Exception:  # noqa: BLE001
                pass
            self._lock_conn = None

    # -- the heartbeat row -------------------------------------------------------------

    def load_row(self) -> KeeperRow | None:
        rows = read_keepers(self.instance, timeout=self.timeout, host=self.host)
        return rows[0] if rows else None

    @_database_errors
    def save_row(self, *, started_at: datetime, interval_s: float, passes: int,
                 state: dict[str, Any]) -> None:
        with pg.connection(self.instance.target, retries=0, timeout=self.timeout) as conn, \
                conn.cursor() as cur:
            cur.execute(
                f"INSERT INTO {KEEPER_TABLE} AS k "  # noqa: S608
                "(host, pid, started_at, last_pass_at, interval_s, passes, state) "
                "VALUES (%s, %s, %s, now(), %s, %s, %s) "
                "ON CONFLICT (host) DO UPDATE SET pid = EXCLUDED.pid, "
                "started_at = EXCLUDED.started_at, last_pass_at = EXCLUDED.last_pass_at, "
                "interval_s = EXCLUDED.interval_s, passes = EXCLUDED.passes, "
                "state = EXCLUDED.state",
                (self.host, self.pid, started_at, interval_s, passes,
                 json.dumps(state, default=str)))

    # -- actions -----------------------------------------------------------------------

    @_database_errors
    def record_action(self, kind: str, target: str, ok: bool, detail: dict[str, Any]) -> None:
        with pg.connection(self.instance.target, retries=1, timeout=self.timeout) as conn, \
                conn.cursor() as cur:
            cur.execute(f"INSERT INTO {ACTIONS_TABLE} (host, kind, target, ok, detail) "  # noqa: S608
                        "VALUES (%s, %s, %s, %s, %s)",
                        (self.host, kind, target, ok, json.dumps(detail, default=str)))

    @_database_errors
    def restarts_since(self, service: str, since: datetime) -> list[datetime]:
        """When `service` was restarted (attempts, failed ones too) since `since`, oldest
        first."""
        with pg.connection(self.instance.target, retries=0, timeout=self.timeout) as conn, \
                conn.cursor() as cur:
            cur.execute(f"SELECT at FROM {ACTIONS_TABLE} WHERE kind = 'restart' "  # noqa: S608
                        "AND target = %s AND at > %s ORDER BY at", (service, since))
            return [row[0].astimezone(UTC) for row in cur.fetchall()]
