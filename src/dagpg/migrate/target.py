"""What the target database allows: a fresh migration, resuming this source's own, starting it
over, or nothing to do.

The target must be empty, or hold this tool's own migration of the same source:

- unfinished, source unchanged (same fingerprint): resume it;
- unfinished, the source changed since (a file restored from a backup after a failed attempt,
  a late write): its partial copy, all the target holds, is removed and the migration starts
  over; refused if a Dagster daemon has run on the target meanwhile, since rows may then not
  all be the migration's;
- finished, source unchanged: nothing to do, and that is a success (a retry after a kill that
  landed after the final commit).

`examine` is read-only and runs before any work, so that a target that will be refused is
refused before the schema is touched; `claim` decides again under the migration lock (another
migration may have started or finished in between) and is the one that writes.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg2 import sql

from dagpg.migrate import state
from dagpg.migrate.errors import (
    MigrateError,
    TargetHasOtherMigrationError,
    TargetNotEmptyError,
)
from dagpg.migrate.source import SourceLayout
from dagpg.migrate.tables import TABLES

HISTORY_TABLES = [*(t.name for t in TABLES), "event_logs"]


@dataclass(frozen=True)
class Decision:
    resume: state.MigrationRow | None = None   # continue this unfinished migration
    restart: state.MigrationRow | None = None  # remove this one's partial copy, start over
    done: state.MigrationRow | None = None     # this source is already migrated: nothing to do


def examine(conn, where: str, layout: SourceLayout, fingerprint: str) -> Decision:
    """What the target allows for this source (read-only); raises when it allows nothing."""
    last = state.latest(conn)
    conn.rollback()
    if last is not None and last.status == state.ABANDONED:
        last = None
    if last is not None and last.fingerprint == fingerprint:
        return Decision(done=last) if last.finished else Decision(resume=last)
    if last is not None and not last.finished:
        if last.source != str(layout.given):
            raise TargetHasOtherMigrationError(where, last.source, last.status)
        if _has_heartbeats(conn):
            raise MigrateError(
                f"{layout.given} changed since migration #{last.id} into {where} started, and "
                "a Dagster daemon has run on the target since, so its partial copy is not "
                "removed; recreate the target database and migrate again")
        return Decision(restart=last)
    busy = {k: v for k, v in history_counts(conn).items() if v}
    if busy:
        raise TargetNotEmptyError(where, "rows in " + ", ".join(sorted(busy)))
    return Decision()


def claim(conn, where: str, layout: SourceLayout, fingerprint: str, dagster_version: str,
          plan: dict) -> tuple[Decision, int]:
    """Under the migration lock: decide again, then record a new migration (or the one to
    resume). Returns the decision and the migration's id; for `done`, that migration's id."""
    decision = examine(conn, where, layout, fingerprint)
    if decision.done:
        return decision, decision.done.id
    if decision.resume:
        return decision, decision.resume.id
    if decision.restart:
        # One transaction: the partial copy goes, the old migration is marked abandoned and
        # the new one recorded together (a kill leaves the old state or the new one).
        with conn.cursor() as cur:
            cur.execute(sql.SQL("TRUNCATE {} RESTART IDENTITY").format(
                sql.SQL(", ").join(sql.Identifier(t) for t in _existing(cur))))
        state.abandon(conn, decision.restart.id, "the source changed since it started")
    return decision, state.start(conn, str(layout.given), fingerprint, dagster_version, plan)


def history_counts(conn) -> dict[str, int]:
    """Rows (0 or 1: only whether there are any) in the target's history tables that exist."""
    out = {}
    with conn.cursor() as cur:
        for name in _existing(cur):
            if name == "instance_info":
                continue
            cur.execute(sql.SQL("SELECT count(*) FROM (SELECT 1 FROM {} LIMIT 1) t").format(
                sql.Identifier(name)))
            out[name] = cur.fetchone()[0]
    conn.rollback()
    return out


def _existing(cur) -> list[str]:
    cur.execute("SELECT t FROM unnest(%s::text[]) t WHERE to_regclass('public.' || t) IS NOT "
                "NULL ORDER BY t", (HISTORY_TABLES,))
    return [r[0] for r in cur.fetchall()]


def _has_heartbeats(conn) -> bool:
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('public.daemon_heartbeats') IS NOT NULL")
        if not cur.fetchone()[0]:
            return False
        cur.execute("SELECT EXISTS (SELECT 1 FROM daemon_heartbeats)")
        found = cur.fetchone()[0]
    conn.rollback()
    return found
