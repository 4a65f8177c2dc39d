"""The one global order of events, and the new storage id of every event.

SQLite numbers events 1..n inside each run's shard; index.db holds copies of the asset, check
and run-status events in an id space of its own, in the order they were written. Cursors and
"latest" queries compare those index ids, so the new order must keep it: the index is the
skeleton. Each index row is matched to its row in the run's shard (same type, timestamp, asset
key, partition and step, in order), and the run's other events before it form its segment:

    new ids = [segment of index row 1][segment of index row 2] ... [runs without any index row]

A segment is a contiguous slice of one run's shard, so each run keeps its own order, and index
row x gets a smaller new id than index row y whenever x < y. Events after a run's last index
row join that row's segment; index rows with no shard row (rare) are copied from index.db.

The plan lives in a scratch SQLite file (not in memory): its size follows the number of index
rows, and lookups are primary-key reads. Building it is deterministic, so a resumed migration
rebuilds the same plan.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections import defaultdict, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

from dagpg.migrate.cursors import NO_EVENT, EventRef, IdMap
from dagpg.migrate.errors import MissingShardError
from dagpg.migrate.revisions import file_revision
from dagpg.migrate.source import SourceFiles, sqlite_error

log = logging.getLogger(__name__)

_ASSET_EVENTS = ("ASSET_MATERIALIZATION", "ASSET_OBSERVATION")
# events that pointers may name: kept in `loose` when index.db no longer has them
_POINTED_AT = (*_ASSET_EVENTS, "ASSET_CHECK_EVALUATION")


@dataclass(frozen=True)
class Anchor:
    pos: int    # 1-based position of the matched row in its shard
    start: int  # new ids of its segment are start+1 .. start+seg
    prev: int   # position of the previous anchor of the run (0 for the first)


@dataclass
class PlanStats:
    shards: int = 0
    shard_rows: int = 0
    index_rows: int = 0
    matched: int = 0
    index_only: int = 0      # index rows without a shard row: copied from index.db
    ambiguous: int = 0       # index rows matched out of order: not copied twice
    unanchored_runs: int = 0

    @property
    def total(self) -> int:
        return self.shard_rows + self.index_only

    def as_dict(self) -> dict:
        return {**self.__dict__, "total": self.total}


class EventPlan:
    """The new id of every event of one source, in a scratch SQLite file."""

    def __init__(self, path: Path, *, readonly: bool = False):
        self.path = path
        self.stats = PlanStats()
        self.revisions: dict[str, tuple[int, str]] = {}  # of the shards: files, one path
        if readonly:  # the event-rendering process (pump.py) only looks things up
            self.db = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True)
            return
        self.db = sqlite3.connect(path)
        self.db.executescript("""
            PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;
            CREATE TABLE IF NOT EXISTS shards (run_key TEXT PRIMARY KEY, n_rows INTEGER,
                                               anchored INTEGER, base INTEGER);
            CREATE TABLE IF NOT EXISTS raw (index_id INTEGER PRIMARY KEY, run_key TEXT,
                                            pos INTEGER, seg INTEGER, rel INTEGER);
            CREATE TABLE IF NOT EXISTS loose (asset_key TEXT, timestamp TEXT, run_key TEXT,
                                              pos INTEGER, new_id INTEGER, kind TEXT);
            CREATE TABLE IF NOT EXISTS anchors (index_id INTEGER PRIMARY KEY, run_key TEXT,
                                                pos INTEGER, start INTEGER, new_id INTEGER,
                                                prev INTEGER);
        """)

    def close(self) -> None:
        self.db.close()

    # -- building ---------------------------------------------------------------------------
    def build(self, files: SourceFiles, shard_ids: list[str],
              tick: Callable[[int], None] | None = None) -> PlanStats:
        """Scan every shard (two at a time: SQLite releases the GIL while it reads) and store
        the anchors in shard order, then lay out the new ids."""
        local = threading.local()
        opened: list[sqlite3.Connection] = []

        def scan(run_key: str) -> _Scan:
            if not hasattr(local, "index"):
                local.index = files.connect(files.layout.index_db, check_same_thread=False)
                opened.append(local.index)
            return _scan_shard(files, local.index, run_key)

        try:
            with ThreadPoolExecutor(max_workers=2, thread_name_prefix="dagpg-plan") as pool:
                for result in pool.map(scan, shard_ids):
                    self._store(result)
                    if tick:
                        tick(1)
        finally:
            for conn in opened:
                conn.close()
        self._lay_out()
        return self.stats

    def _store(self, scan: _Scan) -> None:
        run_key, n, raw = scan.run_key, scan.n, scan.raw
        count, path = self.revisions.get(scan.revision, (0, ""))
        self.revisions[scan.revision] = (count + 1, path or str(scan.path))
        self.stats.index_rows += scan.index_rows
        self.stats.ambiguous += scan.ambiguous
        self.stats.matched += sum(1 for r in raw if r[2] is not None)
        self.stats.index_only += sum(1 for r in raw if r[2] is None)
        self.db.executemany("INSERT OR REPLACE INTO raw VALUES (?, ?, ?, ?, ?)", raw)
        self.db.execute("DELETE FROM loose WHERE run_key = ?", (run_key,))
        self.db.executemany("INSERT INTO loose VALUES (?, ?, ?, ?, NULL, ?)", scan.loose)
        anchored = any(r[2] is not None for r in raw)
        self.db.execute("INSERT OR REPLACE INTO shards VALUES (?, ?, ?, NULL)",
                        (run_key, n, int(anchored)))
        self.stats.shards += 1
        self.stats.shard_rows += n
        if not anchored and n:
            self.stats.unanchored_runs += 1

    def _lay_out(self) -> None:
        db = self.db
        db.execute("DELETE FROM anchors")
        db.execute("""
            INSERT INTO anchors (index_id, run_key, pos, start, new_id, prev)
            SELECT index_id, run_key, pos, s, s + rel, CASE WHEN pos IS NULL THEN NULL
                                                      ELSE pos - rel END
            FROM (SELECT *, SUM(seg) OVER (ORDER BY index_id) - seg AS s FROM raw)
        """)
        db.execute("CREATE INDEX IF NOT EXISTS anchors_run ON anchors (run_key, pos)")
        anchored_total = db.execute("SELECT COALESCE(SUM(seg), 0) FROM raw").fetchone()[0]
        db.execute("DROP TABLE IF EXISTS temp.bases")
        db.execute("CREATE TEMP TABLE bases (run_key TEXT PRIMARY KEY, base INTEGER)")
        db.execute("""
            INSERT INTO bases SELECT run_key, ? + SUM(n_rows) OVER (ORDER BY run_key) - n_rows
            FROM shards WHERE anchored = 0
        """, (anchored_total,))
        db.execute("UPDATE shards SET base = (SELECT base FROM bases "
                   "WHERE bases.run_key = shards.run_key) WHERE anchored = 0")
        runs = [r[0] for r in db.execute("SELECT DISTINCT run_key FROM loose ORDER BY 1")]
        for run_key in runs:
            ids = RunIds(self, run_key)
            db.executemany("UPDATE loose SET new_id = ? WHERE run_key = ? AND pos = ?", [
                (ids.new_id(pos), run_key, pos) for (pos,) in db.execute(
                    "SELECT pos FROM loose WHERE run_key = ? ORDER BY pos", (run_key,)).fetchall()])
        db.execute("CREATE INDEX IF NOT EXISTS loose_key ON loose (asset_key, timestamp)")
        db.commit()

    # -- lookups ----------------------------------------------------------------------------
    def anchors_for(self, run_key: str) -> list[Anchor]:
        return [Anchor(*row) for row in self.db.execute(
            "SELECT pos, start, prev FROM anchors WHERE run_key = ? AND pos IS NOT NULL "
            "ORDER BY pos", (run_key,))]

    def index_only_for(self, run_key: str) -> list[tuple[int, int]]:
        """(index id, new id) of the run's events that exist only in index.db."""
        return self.db.execute("SELECT index_id, new_id FROM anchors WHERE run_key = ? AND "
                               "pos IS NULL ORDER BY index_id", (run_key,)).fetchall()

    def base_for(self, run_key: str) -> int | None:
        """For a run without any index row: its events get base+1 .. base+n."""
        row = self.db.execute("SELECT base FROM shards WHERE run_key = ?", (run_key,)).fetchone()
        return row[0] if row else None

    def sizes(self) -> dict[str, int]:
        """Rows in each run's shard."""
        return dict(self.db.execute("SELECT run_key, n_rows FROM shards"))

    def exact(self, index_id: int) -> int | None:
        row = self.db.execute("SELECT new_id FROM anchors WHERE index_id = ?",
                              (index_id,)).fetchone()
        return row[0] if row else None

    def loose(self, asset_key, timestamp) -> int | None:
        """The new id of the one asset event of `asset_key` at `timestamp` that index.db no
        longer holds (its asset was wiped), or None."""
        rows = self.db.execute("SELECT new_id FROM loose WHERE asset_key = ? AND timestamp = ? "
                               "AND kind IN (?, ?) LIMIT 2",
                               (asset_key, timestamp, *_ASSET_EVENTS)).fetchall()
        return rows[0][0] if len(rows) == 1 else None

    def event_id(self, index_id: int, ref: EventRef | None = None) -> int:
        """The new id of one specific event (a pointer's meaning, see cursors.py): its index
        row's; else, its index row gone (a wiped asset), its row in the run's shard, found by
        run, asset, time and type; else NO_EVENT: it exists nowhere, as in the source."""
        if index_id <= 0:
            return index_id
        new = self.exact(index_id)
        if new is None and ref is not None and ref.run_id is not None \
                and isinstance(ref.timestamp, (int, float)):
            rows = self.db.execute(
                "SELECT new_id FROM loose WHERE run_key = ? AND timestamp = ? AND kind = ? "
                "AND (asset_key = ? OR asset_key IS NULL) LIMIT 2",
                (ref.run_id, _shard_timestamp(ref.timestamp), ref.kind, ref.asset_key)
            ).fetchall()
            new = rows[0][0] if len(rows) == 1 else None
        return NO_EVENT if new is None else new

    def ids(self) -> IdMap:
        """Cursors through `floor`, pointers through `event_id`."""
        return IdMap(cursor=self.floor, event=self.event_id)

    def floor(self, index_id: int) -> int:
        """The new id of the last index event at or before `index_id` (a cursor's meaning)."""
        if index_id <= 0:
            return index_id
        row = self.db.execute("SELECT new_id FROM anchors WHERE index_id <= ? "
                              "ORDER BY index_id DESC LIMIT 1", (index_id,)).fetchone()
        return row[0] if row else 0


@dataclass
class _Scan:
    run_key: str
    path: Path
    n: int = 0
    raw: list[list] = field(default_factory=list)   # [index_id, run_key, pos, seg, rel]
    loose: list[tuple] = field(default_factory=list)
    index_rows: int = 0
    ambiguous: int = 0
    revision: str = "unstamped"


def _scan_shard(files: SourceFiles, index: sqlite3.Connection, run_key: str) -> _Scan:
    """Match one run's index rows to its shard rows (read-only; runs in a plan thread)."""
    path = files.layout.shard_path(run_key)
    out = _Scan(run_key, path)
    pending: dict[tuple, deque] = defaultdict(deque)
    for row in index.execute("SELECT id, dagster_event_type, timestamp, asset_key, partition, "
                             "step_key FROM event_logs WHERE run_id = ? ORDER BY id", (run_key,)):
        pending[row[1:]].append(row[0])
        out.index_rows += 1
    conn = files.connect(path)
    prev = last_x = 0
    # Only rows of the types index.db mirrors can match (most events, log messages, have
    # none): SQLite numbers all rows and filters them, Python sees the few candidates.
    types = sorted({key[0] for key in pending} | set(_POINTED_AT))
    marks = ", ".join("?" * len(types))
    try:
        out.revision = file_revision(conn) or "unstamped"
        out.n, low, high = conn.execute("SELECT count(*), min(id), max(id) FROM event_logs"
                                        ).fetchone()
        if low == 1 and high == out.n:  # ids 1..n: the id is the position; use the type index
            candidates = ("SELECT id, dagster_event_type, timestamp, asset_key, partition, "  # noqa: S608
                          f"step_key FROM event_logs WHERE dagster_event_type IN ({marks}) "
                          "ORDER BY id")
        else:  # rows were deleted: number them
            candidates = (
                "SELECT pos, t, ts, ak, p, sk FROM (SELECT ROW_NUMBER() OVER (ORDER BY id) "  # noqa: S608
                "AS pos, dagster_event_type AS t, timestamp AS ts, asset_key AS ak, "
                "partition AS p, step_key AS sk FROM event_logs) "
                f"WHERE t IN ({marks}) ORDER BY pos")
        for row in conn.execute(candidates, types):
            pos = row[0]
            queue = pending.get(row[1:]) if pending else None
            if queue:
                x = queue.popleft()
                if not queue:
                    del pending[row[1:]]
                if x > last_x:
                    out.raw.append([x, run_key, pos, pos - prev, pos - prev])
                    prev, last_x = pos, x
                else:
                    out.ambiguous += 1
            elif row[1] in _POINTED_AT and (row[3] or row[1] not in _ASSET_EVENTS):
                # (check evaluations have no asset_key in their shard row)
                out.loose.append((row[3], row[2], run_key, pos, row[1]))
    except sqlite3.DatabaseError as exc:
        raise sqlite_error(path, exc) from None
    finally:
        conn.close()
    if out.raw:
        out.raw[-1][3] += out.n - prev  # rows after the run's last index row join its segment
    for queue in pending.values():
        out.raw.extend([x, run_key, None, 1, 1] for x in queue)
    return out


def _shard_timestamp(timestamp: float) -> str:
    """An event's timestamp as its shard's `timestamp` column holds it: naive UTC, written by
    SQLAlchemy with microseconds (Dagster: datetime.fromtimestamp(ts, utc), tz dropped)."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def check_missing_shards(files: SourceFiles, shard_ids: list[str]) -> None:
    """Raise MissingShardError if index.db holds events of a run whose shard file is gone."""
    on_disk = set(shard_ids)
    index = files.connect(files.layout.index_db)
    try:
        rows = index.execute("SELECT run_id, count(*) FROM event_logs GROUP BY run_id "
                             "ORDER BY run_id").fetchall()
    except sqlite3.DatabaseError as exc:
        raise sqlite_error(files.layout.index_db, exc) from None
    finally:
        index.close()
    for run_id, count in rows:
        if (run_id or "") not in on_disk:
            raise MissingShardError(str(files.layout.shard_path(run_id or "")),
                                    run_id or "''", count)


class RunIds:
    """New ids for one run's shard rows, fed positions 1, 2, 3, ... in order."""

    def __init__(self, plan: EventPlan, run_key: str):
        self.anchors = plan.anchors_for(run_key)
        self.base = plan.base_for(run_key) if not self.anchors else None
        self.j = 0

    def new_id(self, pos: int) -> int:
        if self.base is not None:
            return self.base + pos
        anchors, j = self.anchors, self.j
        while pos > anchors[j].pos and j + 1 < len(anchors):
            j += 1
        self.j = j
        a = anchors[j]
        return a.start + pos - a.prev
