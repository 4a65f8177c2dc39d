"""`dagpg db move --to-dagster-home OTHER`: copy the instance into the (empty) database another
dagster.yaml names, typically on a newer PostgreSQL server.

pg_dump and pg_restore come from the newer of the two servers' major versions (an older pg_dump
refuses a newer server; a newer pg_dump reads an older one and writes what the newer server
restores). The dump and the row counts share one snapshot of the source; the load is one
transaction that checks every table's rows (the restore library's loader); then every table's
rows and every sequence's position are compared, and Dagster opens the copy and must report the
same instance id. The source is only read. Anything failing after the load empties the target
again, so the command can simply be run again.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import psycopg2.extensions
import yaml
from psycopg2 import sql

from dagpg import pg
from dagpg.backup import load, tools
from dagpg.backup import manifest as mf
from dagpg.backup.errors import BackupError
from dagpg.backup.folders import backup_directory
from dagpg.instance import Instance, PgTarget
from dagpg.progress import ProgressFn
from dagpg.settings import KitSettings
from dagpg.upgrade import guards
from dagpg.upgrade.errors import MoveFailedError, MoveRefusedError

log = logging.getLogger(__name__)

_WORK_PREFIX = ".dagpg-move-"
_YAML_KEYS = (("hostname", "host"), ("port", "port"), ("db_name", "database"),
              ("username", "user"), ("scheme", "scheme"))


@dataclass
class MoveReport:
    source: str
    target: str
    source_server: str
    target_server: str
    tools: str
    backup: str
    tables: int = 0
    rows: int = 0
    sequences: int = 0
    instance_id: str | None = None
    dagster_revision: str | None = None
    dump_s: float = 0.0
    load_s: float = 0.0
    check_s: float = 0.0
    yaml_changes: list[tuple[str, str, str]] = field(default_factory=list)
    yaml_path: str = ""

    @property
    def duration_s(self) -> float:
        return self.dump_s + self.load_s + self.check_s

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source, "target": self.target, "source_server": self.source_server,
            "target_server": self.target_server, "tools": self.tools, "backup": self.backup,
            "tables": self.tables, "rows": self.rows, "sequences": self.sequences,
            "differences": 0, "instance_id": self.instance_id,
            "dagster_revision": self.dagster_revision, "dump_s": round(self.dump_s, 3),
            "load_s": round(self.load_s, 3), "check_s": round(self.check_s, 3),
            "duration_s": round(self.duration_s, 3), "dagster_yaml": self.yaml_path,
            "yaml_changes": [{"key": k, "from": a, "to": b} for k, a, b in self.yaml_changes],
        }


def move_database(
    source: Instance,
    target: Instance,
    settings: KitSettings,
    *,
    directory: str | os.PathLike | None = None,
    force: bool = False,
    progress: ProgressFn | None = None,
) -> MoveReport:
    """Copy `source`'s database into `target`'s (empty) one and prove the copy equal."""
    say = progress or (lambda _msg: None)
    if source.target.identity() == target.target.identity():
        raise MoveRefusedError(
            f"{target.yaml_path} names the same database as {source.yaml_path} "
            f"({source.target.url()}); give the DAGSTER_HOME of the new server's instance")
    folder_dir = backup_directory(settings, directory)
    with guards.upgrade_lock(source):
        with pg.connection(source.target) as src, pg.connection(target.target) as dst:
            src_major, src_version = pg.server_version(src)
            dst_major, dst_version = pg.server_version(dst)
            if dst_major < src_major:
                raise MoveRefusedError(
                    f"the target server {target.target.where} runs PostgreSQL {dst_version}, "
                    f"older than the source's {src_version}; move to a server of PostgreSQL "
                    f"{src_major} or newer")
            _refuse_non_empty(dst, target)
        guards.refuse_while_running(source, settings, force=force, what="`dagpg db move`")
        backup = guards.newest_verified_backup(source, folder_dir, "moving the database")
        pg_dump = tools.program("pg_dump", max(src_major, dst_major))
        pg_restore = tools.companion(pg_dump, "pg_restore")
        psql = tools.companion(pg_restore, "psql")
        report = MoveReport(
            source=source.target.url(), target=target.target.url(), source_server=src_version,
            target_server=dst_version, tools=f"pg_dump/pg_restore {pg_dump.version}",
            backup=backup.name, yaml_path=str(source.yaml_path),
            yaml_changes=yaml_changes(source, target))
        parent = _work_parent(folder_dir)
        for leftover in parent.glob(f"{_WORK_PREFIX}*"):  # a killed move's dump
            shutil.rmtree(leftover, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=_WORK_PREFIX, dir=parent))
        try:
            _copy(source, target, work, report, pg_dump, pg_restore, psql, say)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return report


def _copy(source, target, work, report, pg_dump, pg_restore, psql, say) -> None:
    dump = work / "move.dump"
    started = time.monotonic()
    say(f"dumping {source.target.where} with {pg_dump.name} {pg_dump.version}")
    counts = _dump(source, dump, pg_dump)
    report.dump_s = time.monotonic() - started
    started = time.monotonic()
    say(f"loading into {target.target.where} (one transaction, row counts checked)")
    try:
        load.load_dump(target.target, dump, counts, pg_restore=pg_restore, psql=psql,
                       progress=say)
    except BackupError as exc:
        raise MoveFailedError(
            f"loading the copy into {target.target.where} failed and was rolled back, so it is "
            f"empty again ({exc}); the source is untouched; fix the cause and run `dagpg db "
            "move` again") from None
    report.load_s = time.monotonic() - started
    started = time.monotonic()
    try:
        say("comparing every table's rows and every sequence's position")
        differences = _compare(source, target, counts)
        report.tables, report.rows = len(counts), sum(counts.values())
        with pg.connection(target.target) as conn, conn.cursor() as cur:
            report.sequences = len(sequences(cur))
        if not differences:
            say("opening the copy with Dagster")
            report.instance_id, report.dagster_revision, problem = _dagster_view(source, target)
            if problem:
                differences.append(problem)
        if differences:
            shown = "; ".join(differences[:3]) + (
                f" (and {len(differences) - 3} more)" if len(differences) > 3 else "")
            raise MoveFailedError(
                f"the copy differs from the source: {shown}; the target was emptied again and "
                "the source is untouched; make sure nothing writes to the source (stop the "
                "services) and run `dagpg db move` again")
    except BaseException:
        _empty(target)
        raise
    report.check_s = time.monotonic() - started


def _dump(source: Instance, path: Path, pg_dump) -> dict[str, int]:
    """pg_dump in a snapshot shared with the row counts taken here."""
    conn = pg.connect(source.target)
    try:
        with conn.cursor() as cur:
            cur.execute("SET idle_in_transaction_session_timeout = 0; SET statement_timeout = 0")
        conn.commit()
        conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
        with conn.cursor() as cur:
            cur.execute("SELECT pg_export_snapshot()")
            snapshot = cur.fetchone()[0]
            tools.run(tools.dump_argv(pg_dump, path, snapshot=snapshot), source.target)
            counts = mf.row_counts(cur)
        conn.rollback()
        return counts
    except BackupError as exc:
        raise MoveFailedError(f"dumping the source failed ({exc}); nothing was changed; fix "
                              "the cause and run `dagpg db move` again") from None
    finally:
        conn.close()


def sequences(cur) -> dict[str, tuple[int | None, bool]]:
    """Every sequence's position outside PostgreSQL's schemas: (last_value, is_called)."""
    cur.execute("SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n "
                "ON n.oid = c.relnamespace WHERE c.relkind = 'S' "
                "AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
                "AND n.nspname NOT LIKE 'pg\\_%%' ORDER BY 1, 2")
    found = {}
    for schema, name in cur.fetchall():
        cur.execute(sql.SQL("SELECT last_value, is_called FROM {}").format(
            sql.Identifier(schema, name)))
        found[mf.table_key(schema, name)] = tuple(cur.fetchone())
    return found


def _compare(source: Instance, target: Instance, counts: dict[str, int]) -> list[str]:
    with pg.connection(source.target) as src, src.cursor() as cur:
        seq_source = sequences(cur)
    with pg.connection(target.target) as dst, dst.cursor() as cur:
        rows_target = mf.row_counts(cur)
        seq_target = sequences(cur)
    out = []
    for table in sorted(set(counts) | set(rows_target)):
        if counts.get(table) != rows_target.get(table):
            out.append(f"table {table}: {counts.get(table, 'missing')} rows in the source, "
                       f"{rows_target.get(table, 'missing')} in the copy")
    for name in sorted(set(seq_source) | set(seq_target)):
        if seq_source.get(name) != seq_target.get(name):
            out.append(f"sequence {name}: {_position(seq_source.get(name))} in the source, "
                       f"{_position(seq_target.get(name))} in the copy")
    return out


def _position(value) -> str:
    if value is None:
        return "missing"
    last, called = value
    return str(last) if called else f"{last} (not yet used)"


def _dagster_view(source: Instance, target: Instance) -> tuple[str | None, str | None,
                                                                 str | None]:
    """Dagster opens the copy: (instance id, schema revision, problem or None)."""
    from dagpg.schema import open_dagster_instance, schema_status

    with pg.connection(source.target) as conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass('public.instance_info') IS NOT NULL")
        expected = None
        if cur.fetchone()[0]:
            cur.execute("SELECT run_storage_id FROM instance_info LIMIT 1")
            row = cur.fetchone()
            expected = row[0] if row else None
    with open_dagster_instance(target) as dagster:
        runs = dagster.get_runs_count()
        # Dagster creates an instance id on first read when there is none (as the webserver
        # does): only compare when the source has one.
        found = dagster.run_storage.get_run_storage_id() if expected else None
    revision = schema_status(target).dagster_current
    with pg.connection(source.target) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM runs")
        source_runs = cur.fetchone()[0]
    if expected and found != expected:
        return found, revision, f"Dagster reads instance id {found} in the copy, {expected} " \
                                "in the source"
    if runs != source_runs:
        return found, revision, f"Dagster counts {runs} runs in the copy, {source_runs} in " \
                                "the source"
    return found, revision, None


def _refuse_non_empty(conn: psycopg2.extensions.connection, target: Instance) -> None:
    with conn.cursor() as cur:
        cur.execute("SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n "
                    "ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') "
                    "AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
                    "AND n.nspname NOT LIKE 'pg\\_%%' ORDER BY 1, 2 LIMIT 4")
        found = [mf.table_key(s, t) for s, t in cur.fetchall()]
    if found:
        more = ", ..." if len(found) > 3 else ""
        raise MoveRefusedError(
            f"the target database {target.target.where} is not empty (it holds "
            f"{', '.join(found[:3])}{more}); give a new, empty database (createdb -O "
            f"{target.target.user} NAME) in {target.yaml_path}")


def _empty(target: Instance) -> None:
    """Drop what the load created, so the target is empty again (and the move can re-run)."""
    try:
        with pg.connection(target.target) as conn, conn.cursor() as cur:
            cur.execute("SELECT nspname FROM pg_namespace WHERE nspname NOT IN "
                        "('pg_catalog', 'information_schema', 'public') "
                        "AND nspname NOT LIKE 'pg\\_%%'")
            for (schema,) in cur.fetchall():
                cur.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
            cur.execute("SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n "
                        "ON n.oid = c.relnamespace WHERE n.nspname = 'public' "
                        "AND c.relkind IN ('r', 'p', 'v', 'm', 'S')")
            kinds = {"v": "VIEW", "m": "MATERIALIZED VIEW", "S": "SEQUENCE"}
            for name, kind in cur.fetchall():
                cur.execute(sql.SQL("DROP {} IF EXISTS {} CASCADE").format(
                    sql.SQL(kinds.get(kind, "TABLE")), sql.Identifier("public", name)))
    except Exception as exc:  # noqa: BLE001  (the original error matters more)
        log.warning("the target %s could not be emptied again: %s", target.target.where, exc)


def yaml_changes(source: Instance, target: Instance) -> list[tuple[str, str, str]]:
    """What to change in the source's dagster.yaml so it names the new server: the keys of its
    `postgres_db` block, or its `postgres_url` (never with a password) when it names the
    database so."""
    url = _postgres_url(source)
    if url is not None:
        key = f"{source.storage_key}.postgres_url"
        if isinstance(url, dict):
            key += f" (environment variable {url['env']})"
        return [(key, _url(source.target),
                 _url(target.target) + (" (the password in place of ***)"
                                        if target.target.password_source != "none" else ""))]
    prefix = f"{source.storage_key}.postgres_db"
    changes = []
    for key, attr in _YAML_KEYS:
        old, new = getattr(source.target, attr), getattr(target.target, attr)
        if str(old) != str(new):
            changes.append((f"{prefix}.{key}", str(old), str(new)))
    if source.target.password_source != target.target.password_source:
        changes.append((f"{prefix}.password", _source(source.target.password_source),
                        _source(target.target.password_source)))
    if source.target.params != target.target.params:
        changes.append((f"{prefix}.params", str(source.target.params),
                        str(target.target.params)))
    return changes


def _postgres_url(source: Instance) -> Any:
    """The `postgres_url` value (a URL or {env: NAME}) of the source's dagster.yaml, when its
    storage block names the database so; else None."""
    if "/" in source.storage_key:  # the older per-storage blocks: postgres_db keys are named
        return None
    try:
        block: Any = yaml.safe_load(source.yaml_path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    for part in source.storage_key.split("."):
        block = block.get(part) if isinstance(block, dict) else None
    return block.get("postgres_url") if isinstance(block, dict) else None


def _url(target: PgTarget) -> str:
    """The target as a postgres_url, `***` for its password, with its query parameters."""
    return target.url() + (f"?{urlencode(target.params)}" if target.params else "")


def _source(password_source: str) -> str:
    if password_source.startswith("env:"):
        return "{env: " + password_source[4:] + "}"
    return "(a literal value)" if password_source == "literal" else "(none)"


def _work_parent(folder_dir: Path) -> Path:
    """The dump goes beside the backups (a disk sized for dumps), else the temp folder."""
    try:
        folder_dir.mkdir(parents=True, exist_ok=True)
        return folder_dir
    except OSError:
        return Path(tempfile.gettempdir())
