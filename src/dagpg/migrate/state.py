"""Progress of a migration in the kit's schema (dagpg.migration_runs / dagpg.migration_steps).

A unit of copy and its step row are committed in one transaction, so after a crash at any point
the steps say exactly what is in the target. One migration writes at a time (advisory lock).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime

import psycopg2.extensions

from dagpg.dbtables import has_table
from dagpg.schema import KIT_SCHEMA

_LOCK = 7_160_004  # pg_advisory_lock key: one migrate-from-sqlite per database
RUNNING, VERIFYING, DONE, FAILED = "running", "verifying", "done", "failed"
ABANDONED = "abandoned"  # its source changed before it finished; its partial copy was removed


@dataclass(frozen=True)
class MigrationRow:
    id: int
    source: str
    fingerprint: str
    status: str
    phase: str | None
    started_at: datetime
    finished_at: datetime | None

    @property
    def finished(self) -> bool:
        return self.status == DONE


def kit_tables_exist(conn) -> bool:
    return has_table(conn, f"{KIT_SCHEMA}.migration_runs")


def latest(conn) -> MigrationRow | None:
    """The newest migration recorded in the target (None if none, or no kit schema yet)."""
    if not kit_tables_exist(conn):
        return None
    with conn.cursor() as cur:
        cur.execute("SELECT id, source, source_fingerprint, status, phase, started_at, "
                    "finished_at FROM dagpg.migration_runs ORDER BY id DESC LIMIT 1")
        row = cur.fetchone()
    return MigrationRow(*row) if row else None


def try_lock(conn: psycopg2.extensions.connection, wait_s: float = 10.0) -> bool:
    """Take the migration lock; wait a little, since a killed predecessor's session may take a
    moment to end on the server."""
    deadline = time.monotonic() + wait_s
    with conn.cursor() as cur:
        while True:
            cur.execute("SELECT pg_try_advisory_lock(%s)", (_LOCK,))
            if cur.fetchone()[0]:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.5)


def start(conn, source: str, fingerprint: str, dagster_version: str, plan: dict) -> int:
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO dagpg.migration_runs (source, source_fingerprint, status, phase, "
            "dagster_version, plan) VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
            (source, fingerprint, RUNNING, "start", dagster_version, json.dumps(plan)))
        mid = cur.fetchone()[0]
    conn.commit()
    return mid


def set_phase(conn, mid: int, phase: str, status: str = RUNNING) -> None:
    with conn.cursor() as cur:
        cur.execute("UPDATE dagpg.migration_runs SET phase = %s, status = %s, "
                    "updated_at = now() WHERE id = %s", (phase, status, mid))
    conn.commit()


def finish(conn, mid: int, status: str, report: dict) -> None:
    with conn.cursor() as cur:
        cur.execute("UPDATE dagpg.migration_runs SET status = %s, phase = 'end', "
                    "report = %s, updated_at = now(), finished_at = now() WHERE id = %s",
                    (status, json.dumps(report, default=str), mid))
    conn.commit()


def abandon(conn, mid: int, why: str) -> None:
    """Mark an unfinished migration abandoned (in the caller's transaction)."""
    with conn.cursor() as cur:
        cur.execute("UPDATE dagpg.migration_runs SET status = %s, phase = 'end', report = %s, "
                    "updated_at = now(), finished_at = now() WHERE id = %s",
                    (ABANDONED, json.dumps({"abandoned": why}), mid))


def steps(conn, mid: int, prefix: str) -> list[tuple[str, int, dict]]:
    """(step, rows, detail) of the committed steps whose name starts with `prefix`."""
    with conn.cursor() as cur:
        cur.execute("SELECT step, rows, detail FROM dagpg.migration_steps "
                    "WHERE migration_id = %s AND left(step, %s) = %s",
                    (mid, len(prefix), prefix))
        return [(s, r, d or {}) for s, r, d in cur.fetchall()]


def record_step(cur, mid: int, step: str, rows: int, detail: dict) -> None:
    """Inside the unit's transaction: the unit is done once this commits."""
    cur.execute("INSERT INTO dagpg.migration_steps (migration_id, step, rows, detail) "
                "VALUES (%s, %s, %s, %s)", (mid, step, rows, json.dumps(detail)))
