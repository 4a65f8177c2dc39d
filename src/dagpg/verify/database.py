"""What the instance's database says: reachable, schemas, instance id, daemon heartbeats, and
the daemon types Dagster requires for this instance."""

from __future__ import annotations

import ast
import importlib.util
import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from dagpg import heartbeats, pg, schema
from dagpg.dbtables import has_table
from dagpg.errors import DagpgError
from dagpg.instance import Instance
from dagpg.verify.services import overlay_environ

log = logging.getLogger(__name__)


@dataclass
class DbObservation:
    error: str | None = None
    server_version: str | None = None
    status: schema.SchemaStatus | None = None
    run_storage_id: str | None = None
    heartbeat_reads: list[list[heartbeats.Heartbeat]] = field(default_factory=list)
    read_at: datetime | None = None
    required_daemons: list[str] | None = None
    required_from: str | None = None  # "webserver" (same instance) or "dagster.yaml"
    required_error: str | None = None

    @property
    def reachable(self) -> bool:
        return self.error is None and self.server_version is not None

    @property
    def heartbeats(self) -> list[heartbeats.Heartbeat]:
        """The latest read."""
        return self.heartbeat_reads[-1] if self.heartbeat_reads else []


def observe(instance: Instance, *, timeout: float) -> DbObservation:
    """Read everything the checks need from the database; errors become `.error`."""
    obs = DbObservation()
    try:
        currents = reread(instance, obs, timeout=timeout)
        obs.status = _schema_status(instance, *currents)
    except DagpgError as exc:
        obs.error = str(exc)
    except Exception as exc:  # noqa: BLE001  (SQLAlchemy/alembic: report, never a traceback)
        log.debug("reading the schema failed", exc_info=True)
        obs.error = f"reading {instance.target.url()} failed: {_first_line(exc)}"
    return obs


def reread(instance: Instance, obs: DbObservation, *, timeout: float
           ) -> tuple[str | None, str | None]:
    """(Re)read server version, instance id and heartbeats into `obs`; return the current
    revisions of Dagster's schema and the kit's."""
    conn = pg.connect(instance.target, retries=0, timeout=timeout)
    try:
        with conn.cursor() as cur:
            cur.execute("SET statement_timeout = %s", (int(timeout * 1000),))
            cur.execute("SHOW server_version")
            obs.server_version = cur.fetchone()[0]
            obs.run_storage_id = _one(cur, "instance_info", "run_storage_id")
            currents = (_one(cur, "alembic_version", "version_num"),
                        _one(cur, f"{schema.KIT_SCHEMA}.{schema.KIT_VERSION_TABLE}",
                             "version_num"))
        obs.heartbeat_reads.append(heartbeats.read_heartbeats(conn))
        obs.read_at = datetime.now(UTC)
        conn.rollback()
        return currents
    finally:
        conn.close()


def _one(cur, table: str, column: str) -> str | None:
    """The first value of `column` in `table` (fixed names, not input), None if absent."""
    if not has_table(cur, table):
        return None
    cur.execute(f"SELECT {column} FROM {table} LIMIT 1")  # noqa: S608
    row = cur.fetchone()
    return row[0] if row else None


def _schema_status(instance: Instance, dagster_current: str | None, kit_current: str | None
                   ) -> schema.SchemaStatus:
    dagster_head = dagster_head_revision()
    if dagster_head is None:  # an unusual Dagster install: ask alembic (imports Dagster)
        return schema.schema_status(instance)
    from alembic.script import ScriptDirectory

    kit_head = ScriptDirectory.from_config(schema.kit_alembic_config()).get_current_head()
    return schema.SchemaStatus(dagster_current, dagster_head, kit_current, kit_head)


def dagster_head_revision() -> str | None:
    """The head of the installed Dagster's alembic revisions, read from its version files
    without importing Dagster (which alone takes most of verify's 2 s budget); None when the
    files do not show exactly one head."""
    spec = importlib.util.find_spec("dagster")
    if spec is None or not spec.submodule_search_locations:
        return None
    versions = Path(next(iter(spec.submodule_search_locations))) / _DAGSTER_VERSIONS
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in versions.glob("*.py"):
        found = dict(_ASSIGNMENT.findall(path.read_text(encoding="utf-8", errors="replace")))
        try:
            revision = ast.literal_eval(found.get("revision", "None"))
            down = ast.literal_eval(found.get("down_revision", "None"))
        except (ValueError, SyntaxError):
            return None
        if not isinstance(revision, str):
            continue
        revisions.add(revision)
        parents.update((down,) if isinstance(down, str) else (down or ()))
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


# `revision = "..."` / `down_revision = ...` at the top level of an alembic revision file.
_ASSIGNMENT = re.compile(r"^(revision|down_revision)\s*=\s*(.+?)\s*(?:#.*)?$", re.MULTILINE)
_DAGSTER_VERSIONS = Path("_core", "storage", "alembic", "versions")


def required_daemon_types(instance: Instance, environment: dict[str, str] | None = None
                          ) -> tuple[list[str] | None, str | None]:
    """Dagster's own list for this instance's dagster.yaml (scheduler, run coordinator,
    monitoring, retries, auto-materialize, freshness), or the error that stopped it."""
    try:
        with overlay_environ(environment or {}), schema.open_dagster_instance(instance) as d:
            return list(d.get_required_daemon_types()), None
    except Exception as exc:  # noqa: BLE001  (Dagster's config errors: report them)
        log.debug("loading the Dagster instance failed", exc_info=True)
        return None, f"Dagster cannot load {instance.yaml_path}: {_first_line(exc)}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
