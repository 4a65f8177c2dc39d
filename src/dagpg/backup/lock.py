"""One backup or restore of an instance at a time: a PostgreSQL session-level advisory lock."""

from __future__ import annotations

from dagpg.backup.errors import BackupInProgressError

LOCK_KEY = 7_160_005  # beside schema.py's 7_160_001 (dagpg db upgrade)


def acquire(conn, where: str) -> None:
    """Take the lock on `conn`'s session (held until it closes) or raise BackupInProgressError."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,))
        if not cur.fetchone()[0]:
            raise BackupInProgressError(where)


def is_free(conn) -> bool:
    """True when no session holds the lock (takes and releases it at once)."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,))
        if not cur.fetchone()[0]:
            return False
        cur.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
    return True
