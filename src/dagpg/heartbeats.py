"""Daemon heartbeats, read straight from an instance's `daemon_heartbeats` table.

Dagster's own checks tolerate heartbeats up to ~30 minutes old; callers here decide with their
own threshold. Works on a PostgreSQL connection (psycopg2) and on a SQLite runs.db (sqlite3).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from dagpg.dbtables import has_table


@dataclass(frozen=True)
class Heartbeat:
    daemon_type: str
    daemon_id: str | None
    timestamp: datetime  # aware, UTC

    def age_s(self, now: datetime | None = None) -> float:
        return ((now or datetime.now(UTC)) - self.timestamp).total_seconds()


def read_heartbeats(conn) -> list[Heartbeat]:
    """Every daemon's latest heartbeat (a DB-API connection; empty if no daemon ever ran)."""
    if not has_table(conn, "daemon_heartbeats"):
        return []
    cur = conn.cursor()
    try:
        cur.execute("SELECT daemon_type, daemon_id, timestamp FROM daemon_heartbeats")
        rows = cur.fetchall()
    finally:
        cur.close()
    return sorted(
        (Heartbeat(t, i, _utc(ts)) for t, i, ts in rows), key=lambda h: h.daemon_type
    )


def still_running(conn, limit_s: float) -> Heartbeat | None:
    """The freshest heartbeat younger than `limit_s`: the daemon runs (or has just stopped)."""
    fresh = [h for h in read_heartbeats(conn) if h.age_s() < limit_s]
    return min(fresh, key=lambda h: h.age_s(), default=None)


def running_refusal(beat: Heartbeat, limit_s: float, services: str, what: str) -> str:
    """The one line that refuses `what` while the daemon heart-beats. A stopped daemon leaves
    its last heartbeats behind (Dagster deletes none on shutdown), so right after "stop the
    services" they are still fresh: it says when they turn stale."""
    age = max(beat.age_s(), 0)
    stale_in = max(limit_s - age, 1)
    return (f"the Dagster daemon is running ({beat.daemon_type} heartbeat {age:.0f}s ago, "
            f"newer than {limit_s:.0f}s); stop the services ({services}) and run {what} again, "
            f"or, if they are already stopped, pass --force (or wait {stale_in:.0f}s: a stopped "
            "daemon's heartbeats turn stale)")


def newest(heartbeats: list[Heartbeat]) -> Heartbeat | None:
    return max(heartbeats, key=lambda h: h.timestamp, default=None)


def _utc(value) -> datetime:
    # Dagster stores naive UTC: a datetime from PostgreSQL, an ISO string from SQLite.
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
