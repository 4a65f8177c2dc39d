"""Dagster's schema migration, made all-or-nothing.

Dagster's own `instance.upgrade()` runs alembic on an AUTOCOMMIT connection (dagster_postgres
creates its engines with isolation_level="AUTOCOMMIT"), so `context.begin_transaction()` in its
env.py (dagster/_core/storage/sql.py, run_migrations_online) opens no real transaction: each
revision's DDL commits as it runs, and a revision failing halfway leaves the schema between two
revisions. PostgreSQL's DDL is transactional, so here every revision runs on one connection
inside one transaction we begin ourselves (alembic then treats it as an external transaction and
neither begins nor commits): all revisions land, with the version row, or none do.

Dagster's data migrations (run storage `migrate()`, asset reindexing, schedule storage
`migrate()`) run afterwards through Dagster's own storages, as `dagpg db upgrade` runs them;
they use their own connections, so a caller that must be able to undo them keeps a backup.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from dagpg import pg, schema
from dagpg.instance import Instance
from dagpg.progress import ProgressFn
from dagpg.upgrade import revisions
from dagpg.upgrade.errors import UpgradeFailedError

log = logging.getLogger(__name__)

LOCK_TIMEOUT = "30s"


@dataclass
class MigrationResult:
    before: str | None
    after: str | None
    applied: list[str] = field(default_factory=list)  # "a -> b, doc" as alembic logged them
    schema_s: float = 0.0
    data_s: float = 0.0

    @property
    def duration_s(self) -> float:
        return self.schema_s + self.data_s

    def as_dict(self) -> dict:
        return {"before": self.before, "after": self.after, "applied": self.applied,
                "schema_s": round(self.schema_s, 3), "data_s": round(self.data_s, 3),
                "duration_s": round(self.duration_s, 3)}


class SchemaMigrationError(UpgradeFailedError):
    """A revision failed; the transaction was rolled back (the schema is where it was)."""

    def __init__(self, before: str | None, failed_step: str | None, reason: str):
        where = f"revision {failed_step}" if failed_step else "Dagster's schema migration"
        super().__init__(f"{where} failed ({reason}); it ran in one transaction, which was "
                         f"rolled back: the schema is still at {before or 'nothing'}")
        self.before = before
        self.failed_step = failed_step
        self.reason = reason


def migrate_schema(instance: Instance) -> MigrationResult:
    """Bring Dagster's schema to head in one transaction (see the module's docstring)."""
    import alembic.command
    from alembic.runtime.migration import MigrationContext

    config = revisions.alembic_config()
    steps = _StepRecorder()
    started = time.monotonic()
    engine = pg.engine(instance.target)
    before = None
    try:
        with engine.connect() as conn, steps:
            with conn.begin():
                conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
                before = MigrationContext.configure(conn).get_current_revision()
                config.attributes["connection"] = conn
                alembic.command.upgrade(config, "head")
                after = MigrationContext.configure(conn).get_current_revision()
    except Exception as exc:  # noqa: BLE001  (alembic, SQLAlchemy, a revision's own error)
        log.info("schema migration failed", exc_info=True)
        raise SchemaMigrationError(before, steps.current, _reason(exc)) from None
    finally:
        engine.dispose()
    return MigrationResult(before=before, after=after, applied=steps.done,
                           schema_s=time.monotonic() - started)


def migrate_data(instance: Instance, result: MigrationResult,
                 progress: ProgressFn | None = None) -> None:
    """Dagster's data migrations and the kit's schema, as `dagpg db upgrade` runs them."""
    started = time.monotonic()
    schema.upgrade(instance, progress)
    result.data_s = time.monotonic() - started


class _StepRecorder(logging.Handler):
    """Records alembic's "Running upgrade a -> b, doc" lines: which step ran, which failed."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.started: list[str] = []
        self._logger = logging.getLogger("alembic.runtime.migration")
        self._level = self._logger.level

    @property
    def current(self) -> str | None:
        return self.started[-1] if self.started else None

    @property
    def done(self) -> list[str]:
        return list(self.started)

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Running upgrade "):
            self.started.append(message.removeprefix("Running upgrade "))

    def __enter__(self) -> _StepRecorder:
        self._logger.addHandler(self)
        if self._logger.getEffectiveLevel() > logging.INFO:
            self._logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc) -> None:
        self._logger.removeHandler(self)
        self._logger.setLevel(self._level)


def _reason(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)  # SQLAlchemy wraps the driver's error
    text = str(orig if orig is not None else exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return first[:300]
