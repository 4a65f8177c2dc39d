"""The keeper's heartbeat row (`dagpg.keeper`), as `dagpg verify` reads it and `dagpg watch`
writes it (dagpg.watch.store). Here, under verify, so that verify never imports the keeper."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg2

from dagpg import pg
from dagpg.dbtables import has_table
from dagpg.errors import DagpgError, DatabaseError
from dagpg.instance import Instance

KEEPER_TABLE = "dagpg.keeper"
STALE_AFTER_INTERVALS = 3  # `dagpg verify`: a keeper silent for 3 intervals has stopped


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


def read_keepers(instance: Instance, *, timeout: float = 5.0, host: str | None = None
                 ) -> list[KeeperRow]:
    """Keeper rows, newest pass first (only `host`'s when given). Empty when none ever ran."""
    try:
        return _read(instance, timeout, host)
    except psycopg2.Error as exc:  # a dropped connection: one line, the caller reports it
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DatabaseError(f"reading {KEEPER_TABLE}: {first}") from None


def _read(instance: Instance, timeout: float, host: str | None) -> list[KeeperRow]:
    with pg.connection(instance.target, retries=0, timeout=timeout) as conn, \
            conn.cursor() as cur:
        if not has_table(cur, KEEPER_TABLE):
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
