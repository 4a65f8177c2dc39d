"""Dagster's tables as its SQLAlchemy models define them, compared with a database, and repaired.

Dagster creates its PostgreSQL schema storage by storage (runs, events, schedules), each in a
transaction of its own that also stamps `alembic_version` at head, then records its data
migrations in `secondary_indexes`. A kill (or a server crash) between those steps leaves a
database stamped at head that lacks tables or markers, which Dagster never repairs: it creates
a storage's tables only when that storage's main table is missing. So before Dagster opens the
instance, `repair()` compares the database with the models of the installed Dagster:

- nothing of Dagster's there: nothing to do (Dagster creates it all);
- complete: nothing to do;
- incomplete and holding no history (no row in any table but bookkeeping): drop what Dagster
  created, so that it creates the whole schema again;
- incomplete and holding history: create the missing tables and indexes (nothing is dropped),
  and let Dagster run its missing data migrations; a missing column cannot be added this way:
  SchemaIncompleteError, and nothing is changed.

The comparison is against the installed Dagster's head: a database stamped at an older revision
is Dagster's own upgrade to do (alembic), and is compared after it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from dagpg.errors import SchemaIncompleteError

log = logging.getLogger(__name__)

# Rows in these tables are bookkeeping, not history: a schema holding only them may be rebuilt.
BOOKKEEPING = {"alembic_version", "secondary_indexes", "instance_info", "daemon_heartbeats"}


@dataclass(frozen=True)
class Missing:
    tables: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()    # "table.column"
    indexes: tuple[str, ...] = ()    # "table.index"
    markers: tuple[str, ...] = ()    # data migrations not recorded in secondary_indexes

    def __bool__(self) -> bool:
        return bool(self.tables or self.columns or self.indexes or self.markers)

    def describe(self) -> str:
        parts = []
        for what, names in (("table", self.tables), ("column", self.columns),
                            ("index", self.indexes), ("data migration", self.markers)):
            if names:
                shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more"
                                                if len(names) > 5 else "")
                parts.append(f"{what}{'s' if len(names) > 1 else ''} {shown}")
        return "; ".join(parts)


def metadatas() -> list:
    """The SQLAlchemy metadata of Dagster's three SQL storages."""
    from dagster._core.storage.event_log.schema import SqlEventLogStorageMetadata
    from dagster._core.storage.runs.schema import RunStorageSqlMetadata
    from dagster._core.storage.schedules.schema import ScheduleStorageSqlMetadata

    return [RunStorageSqlMetadata, SqlEventLogStorageMetadata, ScheduleStorageSqlMetadata]


def table_names() -> set[str]:
    """Every table Dagster's models define, and alembic's version table."""
    return {t.name for md in metadatas() for t in md.sorted_tables} | {"alembic_version"}


def data_migrations() -> set[str]:
    """The data migrations a freshly created schema records as done in secondary_indexes."""
    from dagster._core.storage.event_log.migration import (
        ASSET_DATA_MIGRATIONS,
        EVENT_LOG_DATA_MIGRATIONS,
    )
    from dagster._core.storage.runs.migration import (
        OPTIONAL_DATA_MIGRATIONS,
        REQUIRED_DATA_MIGRATIONS,
    )
    from dagster._core.storage.schedules.migration import (
        OPTIONAL_SCHEDULE_DATA_MIGRATIONS,
        REQUIRED_SCHEDULE_DATA_MIGRATIONS,
    )

    return {*REQUIRED_DATA_MIGRATIONS, *OPTIONAL_DATA_MIGRATIONS, *EVENT_LOG_DATA_MIGRATIONS,
            *ASSET_DATA_MIGRATIONS, *REQUIRED_SCHEDULE_DATA_MIGRATIONS,
            *OPTIONAL_SCHEDULE_DATA_MIGRATIONS}


def present(conn) -> set[str]:
    """Dagster's tables that exist in the connection's schema."""
    import sqlalchemy

    return table_names() & set(sqlalchemy.inspect(conn).get_table_names())


def missing(conn) -> Missing:
    """What the database lacks of the installed Dagster's models (empty when complete)."""
    import sqlalchemy

    inspector = sqlalchemy.inspect(conn)
    existing = set(inspector.get_table_names())
    tables, columns, indexes = [], [], []
    for metadata in metadatas():
        for table in metadata.sorted_tables:
            if table.name not in existing:
                tables.append(table.name)
                continue
            have = {c["name"] for c in inspector.get_columns(table.name)}
            columns += [f"{table.name}.{c.name}" for c in table.columns if c.name not in have]
            have = {i["name"] for i in inspector.get_indexes(table.name)}
            indexes += [f"{table.name}.{i.name}" for i in table.indexes if i.name not in have]
    markers: list[str] = []
    if "secondary_indexes" in existing:
        done = {row[0] for row in conn.execute(sqlalchemy.text(
            "SELECT name FROM secondary_indexes WHERE migration_completed IS NOT NULL"))}
        markers = sorted(data_migrations() - done)
    return Missing(tuple(sorted(set(tables))), tuple(columns), tuple(indexes), tuple(markers))


def holds_history(conn) -> bool:
    """Whether any of Dagster's tables but the bookkeeping ones has a row."""
    import sqlalchemy

    for name in sorted(present(conn) - BOOKKEEPING):
        quoted = '"' + name.replace('"', '""') + '"'
        if conn.execute(sqlalchemy.text(
                f"SELECT EXISTS (SELECT 1 FROM {quoted})")).scalar():  # noqa: S608
            return True
    return False


def repair(conn, head: str, where: str) -> list[str]:
    """Make an interrupted schema creatable again (see the module's docstring), in the caller's
    transaction. Returns what was done, in words (nothing: an empty list)."""
    import sqlalchemy

    found = present(conn)
    if not found:
        return []
    stamped = None
    if "alembic_version" in found:
        stamped = conn.execute(sqlalchemy.text("SELECT version_num FROM alembic_version")
                               ).scalar()
    if stamped not in (None, head):
        return []  # an older schema: Dagster's alembic upgrade comes first
    lacking = missing(conn)
    if not lacking:
        return []
    if not holds_history(conn):
        for name in sorted(found):
            quoted = '"' + name.replace('"', '""') + '"'
            conn.execute(sqlalchemy.text(f"DROP TABLE IF EXISTS {quoted} CASCADE"))
        log.info("Dagster schema in %s was incomplete (%s) and held no history: dropped "
                    "for Dagster to create it again", where, lacking.describe())
        return [f"Dagster's schema was incomplete ({lacking.describe()}) and held no history: "
                "rebuilt"]
    if lacking.columns:
        raise SchemaIncompleteError(where, stamped or "nothing", lacking.describe())
    for metadata in metadatas():
        metadata.create_all(conn, checkfirst=True)  # tables, then their indexes
    for name in lacking.indexes:  # an index of a table that was there: create_all skips it
        table_name, index_name = name.split(".", 1)
        table = next(t for md in metadatas() for t in md.sorted_tables if t.name == table_name)
        next(i for i in table.indexes if i.name == index_name).create(conn, checkfirst=True)
    done = [f"repaired Dagster's schema, which lacked {lacking.describe()}, keeping its history"]
    log.info("Dagster schema in %s: %s", where, done[0])
    return done
