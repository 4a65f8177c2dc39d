"""Events in the global order, rendered as COPY text, in resumable units.

Each unit ends at a marker {"run": key, "id": shard id, "pos": position, "complete": bool}:
everything up to that shard row (and, once complete, the run's index-only events) is in the
target when the unit's step is committed. Rows are rendered in Python (faster than SQLite's
string functions, measured) in chunks of up to 1000 rows; pump.py runs this in a process of
its own, next to the one that sends.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field

from dagpg.migrate import cursors
from dagpg.migrate.idmap import EventPlan, RunIds
from dagpg.migrate.pgcopy import NULL, Column, Rejected, esc
from dagpg.migrate.report import Warnings
from dagpg.migrate.source import SourceFiles, sqlite_error

EVENT_COLUMNS = ("id", "run_id", "event", "dagster_event_type", "timestamp", "step_key",
                 "asset_key", "partition")
EVENTS_COPY = f"COPY event_logs ({', '.join(EVENT_COLUMNS)}) FROM STDIN"
_ID_MARKER = 'storage_id"'
_TIMESTAMP = Column("timestamp", "timestamp without time zone", None).converter()


@dataclass
class Dropped:
    """Identifiers of rows that could not be stored, so verification can leave them out."""

    runs: set[str] = field(default_factory=set)
    asset_keys: set[str] = field(default_factory=set)
    pending: dict[str, set[str]] = field(default_factory=dict)

    def add(self, kind: str, key: str) -> None:
        getattr(self, kind).add(key)
        self.pending.setdefault(kind, set()).add(key)

    def drain(self) -> dict[str, list[str]]:
        out = {kind: sorted(keys) for kind, keys in self.pending.items()}
        self.pending.clear()
        return out

    def load(self, stored: dict[str, list[str]]) -> None:
        for kind, keys in stored.items():
            getattr(self, kind).update(keys)


@dataclass
class UnitLog:
    """The warnings and drops of the unit being made, stored with its step when committed
    (and loaded back by a resumed migration, so its report is complete)."""

    warnings: Warnings = field(default_factory=Warnings)
    dropped: Dropped = field(default_factory=Dropped)

    def discard(self) -> None:
        self.warnings.discard_pending()
        self.dropped.pending.clear()

    def close(self, rows: int, detail: dict) -> dict:
        warnings, dropped = self.warnings.drain(), self.dropped.drain()
        if warnings:
            detail["warnings"] = warnings
        if dropped:
            detail["dropped"] = dropped
        return {"rows": rows, "detail": detail}

    def load(self, detail: dict) -> None:
        self.warnings.load(detail.get("warnings", []))
        self.dropped.load(detail.get("dropped", {}))


class EventRows:
    """Every event line in the global order, resumable from a step's marker.

    Marker {"run": key, "id": shard id, "pos": position, "complete": bool}: everything up to
    that shard row (and, when complete, the run's index-only events) is in the target.
    """

    def __init__(self, files: SourceFiles, plan: EventPlan, shard_ids: list[str],
                 log: UnitLog, batch_rows: int, marker: dict | None):
        self.files, self.plan, self.log = files, plan, log
        self.ids = cursors.IdMap(cursor=plan.floor, event=self._event)
        self.batch_rows = batch_rows
        self.chunk = max(1, min(1000, batch_rows))  # rows read and yielded at a time
        self.marker = marker or {}
        start = self.marker.get("run")
        self.queue = [r for r in shard_ids if start is None or r > start
                      or (r == start and not self.marker.get("complete"))]
        self.finished = False
        self.count = 0
        self._gen = self._all()

    def units(self) -> Iterator[tuple[Iterator[str], dict]]:
        """(chunks of COPY text, then the unit's closing detail) for each unit in turn."""
        while not self.finished:
            self.log.discard()
            chunks = self.unit(self.batch_rows)
            yield chunks, lambda: self.log.close(self.count, dict(self.marker))

    def unit(self, limit: int) -> Iterator[str]:
        self.count = 0
        for lines, marker in self._gen:
            if lines:
                self.count += len(lines)
                yield "".join(lines)
            if marker is not None:
                self.marker = marker
                if self.count >= limit:
                    return
        self.finished = True

    def _all(self) -> Iterator[tuple[str, dict | None]]:
        resume = self.marker
        for run_key in self.queue:
            after_id, pos = 0, 0
            if resume.get("run") == run_key:
                after_id, pos = resume["id"], resume["pos"]
            yield from self._run(run_key, after_id, pos)

    def _run(self, run_key: str, after_id: int, pos: int):
        ids = RunIds(self.plan, run_key)
        path = self.files.layout.shard_path(run_key)
        conn = self.files.connect(path)
        last_id = after_id
        try:
            cursor = conn.execute("SELECT id, run_id, event, dagster_event_type, timestamp, "
                                  "step_key, asset_key, partition FROM event_logs WHERE id > ? "
                                  "ORDER BY id", (after_id,))
            line_for, new_id = self._line, ids.new_id
            while rows := cursor.fetchmany(self.chunk):
                lines = []
                for row in rows:
                    pos += 1
                    line = line_for(new_id(pos), row)
                    if line is not None:  # a dropped row still moves the position
                        lines.append(line)
                last_id = rows[-1][0]
                yield lines, {"run": run_key, "id": last_id, "pos": pos, "complete": False}
        except sqlite3.DatabaseError as exc:
            raise sqlite_error(path, exc) from None
        finally:
            conn.close()
        extra = self.plan.index_only_for(run_key)
        if extra:
            index = self.files.connect(self.files.layout.index_db)
            try:
                for n, (index_id, new_id) in enumerate(extra, 1):
                    row = index.execute("SELECT id, run_id, event, dagster_event_type, "
                                        "timestamp, step_key, asset_key, partition FROM "
                                        "event_logs WHERE id = ?", (index_id,)).fetchone()
                    self.log.warnings.add("index_only", "event_logs", "events found only in "
                                             "index.db (not in their run's shard): copied",
                                             index_id)
                    marker = ({"run": run_key, "id": last_id, "pos": pos, "complete": True}
                              if n == len(extra) else None)
                    line = self._line(new_id, row)
                    yield ([line] if line else []), marker
            finally:
                index.close()
        else:
            yield [], {"run": run_key, "id": last_id, "pos": pos, "complete": True}

    def _event(self, index_id: int, ref: cursors.EventRef | None) -> int:
        new = self.plan.event_id(index_id, ref)
        if new == cursors.NO_EVENT and index_id > 0:
            self.log.warnings.add("orphan", "event_logs", "pointers to events that exist "
                                  "nowhere (their run was deleted): they point at none (0), "
                                  "as in SQLite", index_id)
        return new

    def _line(self, new_id: int, row) -> str | None:
        _, run_id, event, event_type, timestamp, step_key, asset_key, partition = row
        warnings = self.log.warnings
        if event is None:
            warnings.add("invalid", "event_logs", "events without a body: dropped", new_id)
            return None
        if run_id is not None and len(run_id) > 255:
            warnings.add("too_long", "event_logs", "events whose run_id is longer than 255 "
                         "characters: dropped", run_id)
            return None
        if _ID_MARKER in event:
            try:
                event = cursors.remap_serialized(event, self.ids)
            except (ValueError, cursors.Unreadable) as exc:
                warnings.add("cursor", "event_logs", "storage ids inside an event kept "
                             "unchanged", exc)
        if "\x00" in event:
            warnings.add("invalid", "event_logs", "NUL characters removed from events", new_id)
            event = event.replace("\x00", "")
        if timestamp is not None and not (isinstance(timestamp, str) and len(timestamp) >= 19
                                          and timestamp[4] == "-"):
            try:
                timestamp = _TIMESTAMP(timestamp)
            except Rejected:
                warnings.add("invalid", "event_logs", "event timestamps PostgreSQL cannot read: "
                             "stored as NULL", timestamp)
                timestamp = None
        return (f"{new_id}\t{NULL if run_id is None else esc(run_id)}\t{esc(event)}\t"
                f"{NULL if event_type is None else esc(event_type)}\t"
                f"{NULL if timestamp is None else esc(timestamp)}\t"
                f"{NULL if step_key is None else esc(step_key)}\t"
                f"{NULL if asset_key is None else esc(asset_key)}\t"
                f"{NULL if partition is None else esc(partition)}\n")
