"""`history_stats()`: what the history holds, how fast it grows, how long the disk lasts."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from psycopg2 import sql

from dagpg import pg
from dagpg.instance import Instance
from dagpg.prune import disk, events
from dagpg.settings import KitSettings

GROWTH_DAYS = 30


@dataclass(frozen=True)
class TableStat:
    schema: str
    name: str
    rows: int
    exact: bool  # False: PostgreSQL's estimate (pg_class.reltuples, as of the last ANALYZE)
    total_bytes: int  # heap, TOAST and indexes
    index_bytes: int

    def as_dict(self) -> dict[str, Any]:
        return {"table": f"{self.schema}.{self.name}", "rows": self.rows, "exact": self.exact,
                "total_bytes": self.total_bytes, "index_bytes": self.index_bytes}


@dataclass(frozen=True)
class Day:
    day: date
    events: int
    runs: int
    bytes: int  # events times the average event row's size, plus runs likewise

    def as_dict(self) -> dict[str, Any]:
        return {"day": self.day.isoformat(), "events": self.events, "runs": self.runs,
                "bytes": self.bytes}


@dataclass
class StatsReport:
    database_bytes: int = 0
    tables: list[TableStat] = field(default_factory=list)
    events_by_type: dict[str, int] = field(default_factory=dict)
    days: list[Day] = field(default_factory=list)  # oldest first, today last
    growth_bytes_per_day: float = 0.0  # over the last disk.GROWTH_DAYS days
    locations: list[disk.Location] = field(default_factory=list)
    taken_at: datetime | None = None
    duration_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "taken_at": self.taken_at.isoformat() if self.taken_at else None,
            "database_bytes": self.database_bytes,
            "tables": [t.as_dict() for t in self.tables],
            "events_by_type": self.events_by_type,
            "growth_per_day": [d.as_dict() for d in self.days],
            "growth_bytes_per_day": round(self.growth_bytes_per_day),
            "disk": [p.as_dict() for p in self.locations],
            "duration_s": round(self.duration_s, 3),
        }


def history_stats(instance: Instance, settings: KitSettings, *, exact: bool = False,
                  now: datetime | None = None) -> StatsReport:
    """Per-table rows and bytes, events by type, growth per day over the last 30 days, free disk
    space where the database, the backups and the compute logs live and the days until full.
    Reads only. `exact` counts every table's rows instead of using PostgreSQL's estimates."""
    started = time.monotonic()
    now = now or datetime.now(UTC)
    report = StatsReport(taken_at=now)
    with pg.connection(instance.target) as conn:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_database_size(current_database())")
            report.database_bytes = cur.fetchone()[0]
            report.tables = _tables(cur, exact)
            cur.execute("SELECT dagster_event_type, count(*) FROM event_logs GROUP BY 1 "
                        "ORDER BY 2 DESC")
            report.events_by_type = {events.type_name(k): n for k, n in cur.fetchall()}
            report.days = _days(cur, now, report.tables)
        conn.commit()
        report.locations = disk.locations(instance, settings, conn, now=now, exact=exact)
    report.growth_bytes_per_day = report.locations[0].growth_bytes_per_day or 0.0  # database
    report.duration_s = time.monotonic() - started
    return report


def _tables(cur, exact: bool) -> list[TableStat]:
    cur.execute(
        "SELECT n.nspname, c.relname, greatest(c.reltuples, coalesce(s.n_live_tup, 0))::bigint, "
        "pg_total_relation_size(c.oid), pg_indexes_size(c.oid) FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid "
        "WHERE c.relkind IN ('r', 'p') AND n.nspname IN (current_schema(), 'dagpg') "
        "ORDER BY pg_total_relation_size(c.oid) DESC, n.nspname, c.relname")
    found = []
    for schema, name, rows, total, indexes in cur.fetchall():
        counted = exact or rows <= 0  # no statistics yet (never analyzed): count
        if counted:
            cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, name)))
            rows = cur.fetchone()[0]
        found.append(TableStat(schema, name, int(rows), counted, int(total), int(indexes)))
    return found


def _days(cur, now: datetime, tables: list[TableStat]) -> list[Day]:
    """Events and runs written on each of the last GROWTH_DAYS days (UTC)."""
    sizes = {t.name: t for t in tables if t.schema != "dagpg"}
    per_event = _per_row(sizes.get("event_logs"))
    per_run = _per_row(sizes.get("runs"))
    today = now.astimezone(UTC).date()
    starts = [datetime.combine(today - timedelta(days=n), datetime.min.time())
              for n in range(GROWTH_DAYS - 1, -1, -1)]
    bounds = [disk.first_event_id_since(cur, start) for start in starts]
    cur.execute("SELECT max(id) FROM event_logs")
    top = (cur.fetchone()[0] or 0) + 1
    cur.execute("SELECT create_timestamp::date, count(*) FROM runs WHERE create_timestamp >= %s "
                "GROUP BY 1", (starts[0],))
    runs = dict(cur.fetchall())
    days = []
    for n, start in enumerate(starts):
        low = bounds[n]
        high = next((b for b in bounds[n + 1:] if b is not None), top)
        count = 0
        if low is not None and low < high:
            cur.execute("SELECT count(*) FROM event_logs WHERE id >= %s AND id < %s",
                        (low, high))
            count = cur.fetchone()[0]
        day_runs = runs.get(start.date(), 0)
        days.append(Day(start.date(), count, day_runs,
                        round(count * per_event + day_runs * per_run)))
    return days


def _per_row(table: TableStat | None) -> float:
    if table is None or table.rows <= 0:
        return 0.0
    return table.total_bytes / table.rows
