"""Schema management: Dagster's tables (what `dagster instance migrate` does) and the kit's own
tables in schema `dagpg` (alembic, from migrations/), each with its own version table.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from dagpg import dagster_schema, pg
from dagpg.errors import SchemaIncompleteError, SchemaNotAtHeadError
from dagpg.instance import Instance
from dagpg.progress import ProgressFn, reporter

if TYPE_CHECKING:
    import alembic.config

# alembic (and SQLAlchemy under it) is imported where it is used: a third of a second that
# `dagpg --help` and every other command do not need.

log = logging.getLogger(__name__)

KIT_SCHEMA = "dagpg"
KIT_VERSION_TABLE = "alembic_version"
_UPGRADE_LOCK = 7_160_001  # pg_advisory_lock key: one `dagpg db upgrade` at a time


@dataclass(frozen=True)
class SchemaStatus:
    dagster_current: str | None
    dagster_head: str
    kit_current: str | None
    kit_head: str

    @property
    def dagster_at_head(self) -> bool:
        return self.dagster_current == self.dagster_head

    @property
    def kit_at_head(self) -> bool:
        return self.kit_current == self.kit_head

    @property
    def at_head(self) -> bool:
        return self.dagster_at_head and self.kit_at_head

    def as_dict(self) -> dict:
        return {**asdict(self), "at_head": self.at_head}


@dataclass(frozen=True)
class UpgradeReport:
    before: SchemaStatus
    after: SchemaStatus
    repaired: list[str] = field(default_factory=list)  # an interrupted creation, repaired

    @property
    def changed(self) -> bool:
        return self.before != self.after or bool(self.repaired)

    def as_dict(self) -> dict:
        return {"before": self.before.as_dict(), "after": self.after.as_dict(),
                "changed": self.changed, "repaired": self.repaired}


def migrations_dir() -> Path:
    """The kit's alembic folder: packaged in the wheel, or migrations/ in a checkout."""
    packaged = Path(__file__).resolve().parent / "_migrations"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "migrations"


def kit_alembic_config() -> alembic.config.Config:
    import alembic.config

    config = alembic.config.Config()
    config.set_main_option("script_location", str(migrations_dir()))
    return config


def dagster_alembic_config() -> alembic.config.Config:
    from dagster_postgres.run_storage import run_storage
    from dagster_postgres.utils import pg_alembic_config

    return pg_alembic_config(run_storage.__file__)


def schema_status(instance: Instance) -> SchemaStatus:
    """The current and head revisions of both schemas."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    dagster_head = ScriptDirectory.from_config(dagster_alembic_config()).get_current_head()
    kit_head = ScriptDirectory.from_config(kit_alembic_config()).get_current_head()
    with pg.engine(instance.target).connect() as conn:
        dagster_current = MigrationContext.configure(conn).get_current_revision()
        kit_current = MigrationContext.configure(
            conn,
            opts={"version_table": KIT_VERSION_TABLE, "version_table_schema": KIT_SCHEMA},
        ).get_current_revision()
    return SchemaStatus(dagster_current, dagster_head, kit_current, kit_head)


def require_head(instance: Instance) -> SchemaStatus:
    """Raise SchemaNotAtHeadError unless both schemas are at head."""
    status = schema_status(instance)
    if not status.dagster_at_head:
        raise SchemaNotAtHeadError("Dagster", status.dagster_current, status.dagster_head)
    if not status.kit_at_head:
        raise SchemaNotAtHeadError("dagpg", status.kit_current, status.kit_head)
    return status


def upgrade(instance: Instance, progress: ProgressFn | None = None) -> UpgradeReport:
    """Bring Dagster's schema and the kit's to head. Running it twice changes nothing.

    A Dagster schema whose creation was interrupted (stamped at head, tables or data migrations
    missing) is repaired first: see dagster_schema.py.
    """
    say = reporter(progress)
    with pg.lost_connection(instance.target, "upgrading the schemas"):
        return _upgrade(instance, say)


def _upgrade(instance: Instance, say: ProgressFn) -> UpgradeReport:
    before = schema_status(instance)
    with pg.connection(instance.target, autocommit=True) as lock_conn:
        with lock_conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (_UPGRADE_LOCK,))
        with pg.engine(instance.target).begin() as conn:
            repaired = dagster_schema.repair(conn, before.dagster_head, instance.target.where)
        for line in repaired:
            say(line)
        say("Dagster schema: creating or upgrading")
        with open_dagster_instance(instance) as dagster:
            # No print_fn: with one, Dagster's data migrations draw tqdm bars on our stderr.
            dagster.upgrade()
            # What a fresh schema gets and `upgrade()` leaves out: the event-log and optional
            # data migrations (each a no-op once recorded in secondary_indexes).
            dagster.event_log_storage.reindex_events()
            dagster.run_storage.optimize()
            dagster.schedule_storage.optimize()
        with pg.engine(instance.target).connect() as conn:
            left = dagster_schema.missing(conn)
        if left:
            raise SchemaIncompleteError(instance.target.where, before.dagster_head,
                                        left.describe())
        say("dagpg schema: upgrading")
        upgrade_kit(instance)
    return UpgradeReport(before=before, after=schema_status(instance), repaired=repaired)


def upgrade_kit(instance: Instance, revision: str = "head") -> None:
    import alembic.command

    config = kit_alembic_config()
    with pg.engine(instance.target).begin() as conn:
        config.attributes["connection"] = conn
        alembic.command.upgrade(config, revision)


@contextlib.contextmanager
def open_dagster_instance(instance: Instance) -> Iterator:
    """A DagsterInstance for `instance.home`, disposed afterwards."""
    from dagster import DagsterInstance

    dagster = DagsterInstance.from_config(str(instance.home))
    try:
        yield dagster
    finally:
        dagster.dispose()
