"""The copy itself: tables and events in resumable units, then the sequences.

A unit is at most `batch_rows` rows streamed with one COPY and committed together with its
step row in dagpg.migration_steps. Units follow a deterministic order (tables by id, events by
shard then position), and each step records where it ended, so a re-run continues right after
the last committed unit: no duplicates, nothing skipped.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field

from psycopg2 import sql

from dagpg.migrate import state
from dagpg.migrate.events import EVENTS_COPY, Dropped, UnitLog
from dagpg.migrate.idmap import EventPlan
from dagpg.migrate.pgcopy import LineStream, Rejected, target_columns
from dagpg.migrate.pump import EventJob, Pump
from dagpg.migrate.report import Warnings
from dagpg.migrate.source import SourceFiles, sqlite_error
from dagpg.migrate.tables import TableSpec, Transforms

log = logging.getLogger(__name__)


@dataclass
class Copier:
    pg: object                     # psycopg2 connection (not autocommit)
    migration_id: int
    batch_rows: int
    warnings: Warnings
    dropped: Dropped = field(default_factory=Dropped)

    def __post_init__(self) -> None:
        self.log = UnitLog(self.warnings, self.dropped)

    # -- tables ------------------------------------------------------------------------------
    def copy_table(self, spec: TableSpec, src: sqlite3.Connection, transforms: Transforms,
                   tick: Callable[[int], None] | None = None) -> int:
        """Copy one table (what is left of it after the committed units). Returns rows copied."""
        source_columns = _sqlite_columns(src, spec.name)
        if source_columns is None:
            return 0
        with self.pg.cursor() as cur:
            target = target_columns(cur, spec.name)
        names = [c.name for c in target if c.name in source_columns]
        missing = sorted(set(source_columns) - {c.name for c in target})
        if missing:
            self.warnings.add("invalid", spec.name, "source columns the target lacks (not "
                              "copied)", ", ".join(missing))
        converters = [c.converter() for c in target if c.name in source_columns]
        done = self._resume(f"table:{spec.name}:", tick)
        last_id = max((d.get("last_id", 0) for _, _, d in done), default=0)
        self._report_filtered(spec, src)
        transform = transforms.by_table.get(spec.name)
        select = ", ".join(f"{spec.expressions.get(n, _q(n))}" for n in names)
        where = f"AND ({spec.where})" if spec.where else ""
        query = (f"SELECT {select} FROM {spec.name} WHERE id > ? {where} "  # noqa: S608
                 f"ORDER BY id LIMIT ?")
        copy_sql = sql.SQL("COPY {} ({}) FROM STDIN").format(
            sql.Identifier(spec.name), sql.SQL(", ").join(map(sql.Identifier, names)))
        id_at = names.index("id")
        total = 0
        while True:
            try:
                rows = src.execute(query, (last_id, self.batch_rows)).fetchall()
            except sqlite3.DatabaseError as exc:
                raise sqlite_error(spec.file, exc) from None
            if not rows:
                return total
            self.log.discard()
            lines = []
            for values in rows:
                line = self._table_line(spec, names, converters, values, transform)
                if line is not None:
                    lines.append(line)
            first, last_id = rows[0][id_at], rows[-1][id_at]
            with self.pg.cursor() as cur:
                if spec.replace and total == 0 and not done:
                    cur.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier(spec.name)))
                cur.copy_expert(copy_sql, LineStream(iter(lines)))
                state.record_step(cur, self.migration_id, f"table:{spec.name}:{first}",
                                  len(lines), self.log.close(0, {"last_id": last_id})["detail"])
            self.pg.commit()
            total += len(lines)
            if tick:
                tick(len(rows))

    def _table_line(self, spec, names, converters, values, transform) -> str | None:
        if transform:
            row = transform(dict(zip(names, values, strict=True)))
            if row is None:
                return None
            values = [row[n] for n in names]
        try:
            return "\t".join(conv(v) for conv, v in zip(converters, values, strict=True)) + "\n"
        except Rejected as exc:
            key = dict(zip(names, values, strict=True))
            what = key.get("run_id") or key.get("asset_key") or key.get("id")
            if spec.name == "runs":
                self.dropped.add("runs", str(key.get("run_id")))
            if spec.name == "asset_keys":
                self.dropped.add("asset_keys", str(key.get("asset_key")))
            self.warnings.add(exc.kind, spec.name, f"rows PostgreSQL cannot hold: dropped "
                              f"({exc})", what)
            return None

    def _resume(self, prefix: str, tick) -> list[tuple[str, int, dict]]:
        """The committed units under `prefix`; their warnings and drops join this report."""
        done = state.steps(self.pg, self.migration_id, prefix)
        for _step, _rows, detail in done:
            self.log.load(detail)
        self.pg.rollback()
        if tick and done:
            tick(sum(rows for _, rows, _ in done))
        return done

    def _report_filtered(self, spec: TableSpec, src: sqlite3.Connection) -> None:
        if spec.where:
            count = src.execute(f"SELECT count(*) FROM {spec.name} "  # noqa: S608
                                f"WHERE NOT ({spec.where})").fetchone()[0]
            if count:
                self.warnings.add("orphan", spec.name, f"{spec.orphans}: dropped", count=count)
        column, condition, what = spec.nulled
        if column:
            rows = src.execute(f"SELECT run_id FROM {spec.name} "  # noqa: S608
                               f"WHERE {condition}").fetchall()
            for (key,) in rows:
                self.warnings.add("orphan", spec.name, what, key)

    # -- events ------------------------------------------------------------------------------
    def copy_events(self, files: SourceFiles, plan: EventPlan, shard_ids: list[str],
                    tick: Callable[[int], None] | None = None) -> int:
        """Stream every event into event_logs; the rendering runs in a process of its own
        (pump.py) while this one sends and commits, unit by unit."""
        done = self._resume("events:", tick)
        marker = None
        if done:
            marker = max(done, key=lambda s: int(s[0].split(":")[1]))[2]
        unit_no = len(done)
        job = EventJob(files=files, plan_path=plan.path, shard_ids=shard_ids, marker=marker,
                       batch_rows=self.batch_rows)
        total = 0
        pump = Pump(job)
        try:
            for stream in pump.units():
                with self.pg.cursor() as cur:
                    cur.copy_expert(EVENTS_COPY, stream, size=1 << 20)
                    end = stream.end
                    if not end.rows:
                        continue
                    unit_no += 1
                    state.record_step(cur, self.migration_id, f"events:{unit_no}", end.rows,
                                      end.detail)
                self.pg.commit()
                self.log.load(end.detail)  # the unit's warnings were made in the other process
                total += end.rows
                if tick:
                    tick(end.rows)
        finally:
            pump.stop()
        self.pg.rollback()
        return total

    # -- sequences ---------------------------------------------------------------------------
    def reset_sequences(self) -> list[tuple[str, int]]:
        """Every id sequence of Dagster's tables moved past the table's largest id."""
        out = []
        with self.pg.cursor() as cur:
            cur.execute("""
                SELECT c.relname, pg_get_serial_sequence(quote_ident(c.relname), 'id')
                FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'id'
                WHERE c.relkind = 'r' AND c.relnamespace = current_schema()::regnamespace
                ORDER BY c.relname""")
            for table, sequence in cur.fetchall():
                if not sequence:
                    continue
                cur.execute(sql.SQL("SELECT max(id) FROM {}").format(sql.Identifier(table)))
                top = cur.fetchone()[0]
                if top is None:
                    cur.execute("SELECT setval(%s, 1, false)", (sequence,))
                else:
                    cur.execute("SELECT setval(%s, %s, true)", (sequence, top))
                out.append((table, top or 0))
        self.pg.commit()
        return out


def _sqlite_columns(conn: sqlite3.Connection, table: str) -> list[str] | None:
    rows = conn.execute(f"PRAGMA table_info({_q(table)})").fetchall()
    return [r[1] for r in rows] or None


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
