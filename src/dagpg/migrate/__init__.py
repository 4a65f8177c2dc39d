"""`dagpg migrate-from-sqlite`: move a SQLite instance's whole history into PostgreSQL.

    from dagpg.instance import resolve_instance
    from dagpg.migrate import migrate
    report = migrate(resolve_instance(), "/old/dagster_home", progress=print)

run.py runs the phases in order. source.py finds, checks and reads the SQLite files (never
writing to them), revisions.py checks their schema, target.py decides what the target allows,
idmap.py lays out the global event order, tables.py/copier.py/events.py/pump.py copy in
resumable units, compute_logs.py copies the captured logs, cursors.py rewrites stored storage ids
(cursors and pointers), verify.py/compare_events.py/verify_worker.py prove the result through
Dagster's APIs, counts.py counts both sides, state.py records progress in the kit's `dagpg`
schema.

Names are imported lazily, so that the event-rendering child (`python -m
dagpg.migrate.pump`) starts without loading the rest.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "migrate": "dagpg.migrate.run",
    "DEFAULT_BATCH_ROWS": "dagpg.migrate.run",
    "HEARTBEAT_MAX_AGE_S": "dagpg.migrate.run",
    "MigrationReport": "dagpg.migrate.report",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
