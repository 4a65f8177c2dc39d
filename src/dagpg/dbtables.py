"""Whether a table exists: the kit's one way to tell, on PostgreSQL and on SQLite alike.

Ask before reading a table that may be missing (an instance no daemon ever ran on, an old
SQLite source, a database without the kit's schema), instead of catching the error: a failed
statement aborts a PostgreSQL transaction, and error texts differ between servers and versions.
"""

from __future__ import annotations

import sqlite3

_SQLITE = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
_POSTGRES = "SELECT to_regclass(%s) IS NOT NULL"


def has_table(db, name: str) -> bool:
    """Whether table `name` exists. `db` is a sqlite3 connection, or a psycopg2 connection or
    cursor; on PostgreSQL `name` may be schema-qualified (`dagpg.backups`), else the search path
    decides."""
    if isinstance(db, sqlite3.Connection | sqlite3.Cursor):
        return db.execute(_SQLITE, (name,)).fetchone() is not None
    if hasattr(db, "cursor"):  # a psycopg2 connection
        with db.cursor() as cur:
            return has_table(cur, name)
    db.execute(_POSTGRES, (name,))
    return bool(db.fetchone()[0])
