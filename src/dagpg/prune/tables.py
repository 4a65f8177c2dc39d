"""Table sizes and VACUUM of the tables a prune touches."""

from __future__ import annotations

import logging

import psycopg2.errors
from psycopg2 import sql

log = logging.getLogger(__name__)

# Every table a prune deletes from (or, for concurrency_slots, updates).
TOUCHED = ("event_logs", "asset_event_tags", "asset_check_executions", "run_tags", "runs",
           "concurrency_slots", "pending_steps")

# A row in Dagster's key-value table (kvs: any key, no foreign keys) from the first delete of a
# prune until its VACUUM: a prune killed in between leaves it, and the next one, finding nothing
# left to delete, still owes the tables their VACUUM.
VACUUM_OWED_KEY = "dagpg/prune/vacuum_owed"


def sizes(conn, tables=TOUCHED) -> dict[str, int]:
    """Bytes on disk of each table that exists (heap, TOAST and indexes)."""
    with conn.cursor() as cur:
        cur.execute("SELECT t, pg_total_relation_size(to_regclass(t)) FROM unnest(%s::text[]) t "
                    "WHERE to_regclass(t) IS NOT NULL", (list(tables),))
        found = {t: int(n) for t, n in cur.fetchall()}
    conn.commit()
    return found


def row_bytes(conn, tables=TOUCHED, *, exact: bool = False) -> dict[str, float]:
    """Average bytes on disk per row of each table (for estimates). Rows come from the planner's
    statistics (stale in a fresh copy of a database: its pg_class came along, its activity
    counters did not); a table without them, or every table with `exact`, is counted."""
    found = {}
    with conn.cursor() as cur:
        cur.execute("SELECT c.relname, pg_total_relation_size(c.oid)::float8, "
                    "greatest(c.reltuples, coalesce(s.n_live_tup, 0)) FROM pg_class c "
                    "LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid "
                    "WHERE c.oid = ANY(ARRAY(SELECT to_regclass(t) FROM unnest(%s::text[]) t))",
                    (list(tables),))
        for table, size, rows in cur.fetchall():
            if exact or rows <= 0:
                cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
                rows = cur.fetchone()[0]
            found[table] = size / rows if rows > 0 else 0.0
    conn.commit()
    return found


def owe_vacuum(conn) -> None:
    """Record (committed) that the touched tables have dead rows a VACUUM has not seen yet."""
    with conn.cursor() as cur:
        cur.execute("INSERT INTO kvs (key, value) VALUES (%s, now()::text) "
                    "ON CONFLICT (key) DO NOTHING", (VACUUM_OWED_KEY,))
    conn.commit()


def vacuum_owed(conn) -> bool:
    """Whether a former prune deleted rows and was stopped before its VACUUM."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('kvs') IS NOT NULL")
        found = cur.fetchone()[0]
        if found:
            cur.execute("SELECT 1 FROM kvs WHERE key = %s", (VACUUM_OWED_KEY,))
            found = cur.fetchone() is not None
    conn.commit()
    return found


def vacuum_paid(conn) -> None:
    with conn.cursor() as cur:
        cur.execute("DELETE FROM kvs WHERE key = %s", (VACUUM_OWED_KEY,))
    conn.commit()


def vacuum(conn, tables) -> tuple[list[str], list[str]]:
    """VACUUM (ANALYZE) each table, never FULL: no exclusive lock, the webserver keeps reading
    and writing; the space of deleted rows is reused by new ones. Returns (vacuumed, busy): a
    table whose lock another session holds past lock_timeout (autovacuum's anti-wraparound
    pass does not give way) is left to autovacuum; the prune still did what it was asked."""
    done, busy = [], []
    old = conn.autocommit
    conn.autocommit = True  # VACUUM cannot run inside a transaction
    try:
        with conn.cursor() as cur:
            cur.execute("SET statement_timeout = 0")
            for table in tables:
                try:
                    cur.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(table)))
                except psycopg2.errors.LockNotAvailable:
                    log.info("VACUUM of %s: its lock is held by another session; skipped", table)
                    busy.append(table)
                    continue
                done.append(table)
    finally:
        conn.autocommit = old
    return done, busy
