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
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg2

from dagpg import pg
from dagpg.errors import DagpgError, DatabaseError
from dagpg.instance import Instance

log = logging.getLogger(__name__)

LOCK_KEY = 7_160_011  # beside schema.py's 7_160_001, migrate's _004 and backup's _005
KEEPER_TABLE = "dagpg.keeper"
ACTIONS_TABLE = "dagpg.keeper_actions"
STALE_AFTER_INTERVALS = 3  # `dagpg verify`: a keeper silent for 3 intervals has stopped


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


@dataclass
class KeeperRow:
    host: str
    pid: int
    started_at: datetime
    last_pass_at: datetime
    interval_s: float
    passes: int
    state: dict[str, Any] = field(default_factory=dict)

    def age_s(self, now: datetime | None = None) -> float:
        return ((now or datetime.now(UTC)) - self.last_pass_at).total_seconds()

    def as_dict(self) -> dict[str, Any]:
        return {"host": self.host, "pid": self.pid, "started_at": self.started_at.isoformat(),
                "last_pass_at": self.last_pass_at.isoformat(), "interval_s": self.interval_s,
                "passes": self.passes, "gave_up": self.state.get("gave_up") or {}}


class Store:
    """The keeper's connection to its database; every call reconnects after a failure."""

    def __init__(self, instance: Instance, *, timeout: float = 5.0):
        self.instance = instance
        self.timeout = timeout
        self.host = this_host()
        self.pid = os.getpid()
        self._lock_conn = None

    # -- the lock ----------------------------------------------------------------------

    @_database_errors
    def hold_lock(self) -> bool:
        """True while this process holds the keeper lock (taken now if free)."""
        if self._lock_conn is not None:
            try:
                with self._lock_conn.cursor() as cur:
                    cur.execute("SELECT 1")
                return True
            except Exception:  # noqa: BLE001  (the connection died: the lock went with it)
                self._drop_lock_conn()
        conn = pg.connect(self.instance.target, retries=0, timeout=self.timeout,
                          autocommit=True)
        with conn.cursor() as cur:
            cur.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,))
            if cur.fetchone()[0]:
                self._lock_conn = conn
                return True
        conn.close()
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


@_database_errors
def read_keepers(instance: Instance, *, timeout: float = 5.0, host: str | None = None
                 ) -> list[KeeperRow]:
    """Keeper rows, newest pass first (only `host`'s when given). Empty when none ever ran."""
    with pg.connection(instance.target, retries=0, timeout=timeout) as conn, \
            conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (KEEPER_TABLE,))
        if not cur.fetchone()[0]:
            raise DagpgError(f"{KEEPER_TABLE} does not exist: run `dagpg db upgrade`")
        where = "WHERE host = %s " if host else ""
        cur.execute("SELECT host, pid, started_at, last_pass_at, interval_s, passes, state "  # noqa: S608
                    f"FROM {KEEPER_TABLE} {where}ORDER BY last_pass_at DESC",
                    (host,) if host else ())
        return [KeeperRow(h, p, s.astimezone(UTC), last.astimezone(UTC), i, n, st or {})
                for h, p, s, last, i, n, st in cur.fetchall()]


def is_stale(row: KeeperRow, now: datetime | None = None) -> bool:
    limit = timedelta(seconds=STALE_AFTER_INTERVALS * row.interval_s)
    return (now or datetime.now(UTC)) - row.last_pass_at > limit
