"""Free disk space where the database, the backups and the compute logs live, and how long it
lasts at the history's current growth. A full disk stops PostgreSQL from accepting writes, and
Dagster with it.

The database's folder is known when the server is on this machine: `SHOW data_directory`
(superusers and members of pg_read_all_settings), else the project-local cluster's folder
(`dagpg db up`). Growth is the event rows written per day over the last 7 days (event ids grow
with time, so two index probes find them) times the average event row's size on disk, plus the
runs; it counts what is written, not what pruning frees again, so the days left err short.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg2

from dagpg.instance import Instance
from dagpg.prune import tables
from dagpg.settings import KitSettings

log = logging.getLogger(__name__)

GROWTH_DAYS = 7
_LOCAL = ("localhost", "127.0.0.1", "::1")


@dataclass
class Location:
    role: str  # database | backups | compute logs
    path: Path | None
    total_bytes: int | None = None
    free_bytes: int | None = None
    growth_bytes_per_day: float | None = None  # of what this role writes here
    days_left: float | None = None  # at the growth of everything on this file system
    shares_with: list[str] = field(default_factory=list)
    note: str | None = None
    _device: int | None = None

    @property
    def free_pct(self) -> float | None:
        if not self.total_bytes:
            return None
        return 100.0 * (self.free_bytes or 0) / self.total_bytes

    def as_dict(self) -> dict[str, Any]:
        return {"role": self.role, "path": str(self.path) if self.path else None,
                "total_bytes": self.total_bytes, "free_bytes": self.free_bytes,
                "free_pct": round(self.free_pct, 2) if self.free_pct is not None else None,
                "growth_bytes_per_day": (round(self.growth_bytes_per_day)
                                         if self.growth_bytes_per_day is not None else None),
                "days_left": round(self.days_left, 1) if self.days_left is not None else None,
                "shares_with": self.shares_with, "note": self.note}


def locations(instance: Instance, settings: KitSettings, conn=None,
              now: datetime | None = None, exact: bool = False) -> list[Location]:
    """The database's (first), the backups' and the compute logs' folders, with free space and
    days left. `conn` (to the instance's database) gives the database's folder and the growth
    (`exact`: see growth_per_day); without it only the local folders are measured."""
    from dagpg.backup import backup_directory

    database = Location("database", None)
    growth = None
    if conn is not None:
        database.path, database.note = _data_directory(conn, instance)
        growth = growth_per_day(conn, now=now, exact=exact)
        database.growth_bytes_per_day = growth
    else:
        database.note = "database not reachable"
    found = [database,
             Location("backups", backup_directory(settings)),
             Location("compute logs", instance.compute_logs_dir)]
    for place in found:
        if place.path is not None:
            _measure(place)
    by_device: dict[int, list[Location]] = {}
    for place in found:
        if place._device is not None:
            by_device.setdefault(place._device, []).append(place)
    for places in by_device.values():
        rate = sum(p.growth_bytes_per_day or 0 for p in places)
        for place in places:
            place.shares_with = [p.role for p in places if p is not place]
            if rate > 0 and place.free_bytes is not None:
                place.days_left = place.free_bytes / rate
    return found


def growth_per_day(conn, *, days: int = GROWTH_DAYS, now: datetime | None = None,
                   exact: bool = False) -> float:
    """Bytes per day the history grew by over the last `days` days (events and runs); `exact`
    counts the tables' rows for the bytes per row instead of using PostgreSQL's estimate."""
    now = now or datetime.now(UTC)
    since = (now - timedelta(days=days)).replace(tzinfo=None)
    with conn.cursor() as cur:
        cur.execute("SELECT max(id) FROM event_logs")
        newest = cur.fetchone()[0]
        first = first_event_id_since(cur, since) if newest is not None else None
        events = (newest - first + 1) if first is not None else 0
        cur.execute("SELECT count(*) FROM runs WHERE create_timestamp >= %s", (since,))
        runs = cur.fetchone()[0]
    conn.commit()
    per_row = tables.row_bytes(conn, ("event_logs", "runs"), exact=exact)
    return (events * per_row.get("event_logs", 0) + runs * per_row.get("runs", 0)) / days


def first_event_id_since(cur, since: datetime) -> int | None:
    """The smallest event id stamped at or after `since`, by bisection over ids (Dagster assigns
    ids in insertion order and stamps events as it writes them)."""
    cur.execute("SELECT min(id), max(id) FROM event_logs")
    low, high = cur.fetchone()
    if low is None:
        return None
    cur.execute("SELECT timestamp FROM event_logs WHERE id = %s", (high,))
    if cur.fetchone()[0] < since:
        return None
    best = high
    while low <= high:
        mid = (low + high) // 2
        cur.execute("SELECT id, timestamp FROM event_logs WHERE id >= %s AND id <= %s "
                    "ORDER BY id LIMIT 1", (mid, high))
        row = cur.fetchone()
        if row is None:  # no ids left in [mid, high]
            high = mid - 1
        elif row[1] >= since:  # the answer is at most this id; none exist in [mid, id)
            best = min(best, row[0])
            high = mid - 1
        else:
            low = row[0] + 1
    return best


def _data_directory(conn, instance: Instance) -> tuple[Path | None, str | None]:
    if instance.target.host not in _LOCAL:
        return None, (f"the server {instance.target.host} is not this machine: check its disk "
                      "there")
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW data_directory")
            path = Path(cur.fetchone()[0])
        conn.commit()
        return path, None
    except psycopg2.Error:
        conn.rollback()
    from dagpg.errors import DagpgError
    from dagpg.localdb import cluster_for

    try:
        data = cluster_for(instance).data_dir
    except DagpgError:
        data = None
    if data is not None and (data / "PG_VERSION").is_file():
        return data, None
    return None, ("the server does not tell its folder to this user (needs pg_read_all_settings) "
                  "and it is not the project-local cluster: check that disk yourself")


def _measure(place: Location) -> None:
    probe = place.path
    while probe is not None and not probe.exists():
        probe = probe.parent if probe.parent != probe else None
    if probe is None:
        place.note = f"{place.path} and its parents do not exist"
        return
    try:
        usage = shutil.disk_usage(probe)
        place._device = os.stat(probe).st_dev
    except OSError as exc:
        place.note = f"cannot measure {probe}: {exc.strerror or exc}"
        return
    place.total_bytes, place.free_bytes = usage.total, usage.free
