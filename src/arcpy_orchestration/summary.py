"""The park-access summary: counts and value statistics, near vs not near, overall and by district.

Backends compute group statistics (`GroupStats`); this module assembles them, derives the
shares, and reads/writes the summary as JSON (what the `parcel_summary` asset hands on).
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

ALL_PARCELS = "All parcels"
NO_DISTRICT = "(no district)"
CLASSES = ("near", "not_near", "all")


@dataclass(frozen=True)
class Stats:
    """One group's figures. Totals, means and medians are over parcels that have a value."""

    parcels: int = 0
    valued: int = 0
    total: float = 0.0
    mean: float | None = None
    median: float | None = None

    @property
    def nulls(self) -> int:
        return self.parcels - self.valued


@dataclass(frozen=True)
class GroupStats:
    """What a backend reports: `district` None means every district, `cls` is near/not_near/all."""

    district: str | None
    cls: str
    stats: Stats


@dataclass(frozen=True)
class AreaSummary:
    area: str
    near: Stats
    not_near: Stats
    all: Stats

    @property
    def share_parcels_near(self) -> float:
        return self.near.parcels / self.all.parcels if self.all.parcels else 0.0

    @property
    def share_value_near(self) -> float:
        return self.near.total / self.all.total if self.all.total else 0.0


@dataclass(frozen=True)
class Summary:
    overall: AreaSummary
    districts: tuple[AreaSummary, ...]
    walk_distance_m: float
    value_field: str
    district_field: str
    parcels: str = ""  # the flagged parcels dataset the figures come from
    notes: dict = field(default_factory=dict)  # backend, CRS, repaired geometries, ...

    @property
    def areas(self) -> tuple[AreaSummary, ...]:
        return (self.overall, *self.districts)

    def to_dict(self) -> dict:
        return {
            "walk_distance_m": self.walk_distance_m,
            "value_field": self.value_field,
            "district_field": self.district_field,
            "parcels": self.parcels,
            "notes": self.notes,
            "areas": [
                {"area": a.area, **{c: asdict(getattr(a, c)) for c in CLASSES},
                 "share_parcels_near": a.share_parcels_near,
                 "share_value_near": a.share_value_near}
                for a in self.areas
            ],
        }

    @classmethod
    def from_dict(cls, data: dict) -> Summary:
        areas = [AreaSummary(a["area"], *(Stats(**a[c]) for c in CLASSES)) for a in data["areas"]]
        return cls(areas[0], tuple(areas[1:]), data["walk_distance_m"], data["value_field"],
                   data["district_field"], data.get("parcels", ""), data.get("notes", {}))

    def write_json(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path

    @classmethod
    def read_json(cls, path: str | os.PathLike) -> Summary:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def to_markdown(self, max_rows: int = 25) -> str:
        """A compact table for the Dagster UI's metadata preview."""
        head = (f"| {self.district_field} | parcels | near | share near | "
                f"{self.value_field} total | share of value near | median near | "
                "median not near | no value |")
        lines = [head, "|" + "---|" * 9]
        for a in self.areas[:max_rows]:
            lines.append(
                f"| {a.area} | {a.all.parcels:,} | {a.near.parcels:,} | "
                f"{a.share_parcels_near:.1%} | {a.all.total:,.0f} | {a.share_value_near:.1%} | "
                f"{_num(a.near.median)} | {_num(a.not_near.median)} | {a.all.nulls:,} |"
            )
        if len(self.areas) > max_rows:
            lines.append(f"| ... {len(self.areas) - max_rows} more districts in the workbook |"
                         + " |" * 8)
        return "\n".join(lines)


def assemble(groups: list[GroupStats], *, walk_distance_m: float, value_field: str,
             district_field: str, parcels: str = "", notes: dict | None = None) -> Summary:
    """A Summary from backend group statistics; missing groups are all-zero."""
    table = {(g.district, g.cls): g.stats for g in groups}
    districts = sorted({g.district for g in groups if g.district is not None}, key=_sort_key)

    def area(name: str, key: str | None) -> AreaSummary:
        return AreaSummary(name, *(table.get((key, c), Stats()) for c in CLASSES))

    return Summary(area(ALL_PARCELS, None), tuple(area(d, d) for d in districts),
                   walk_distance_m, value_field, district_field, parcels, notes or {})


def group_statistics_rows(rows: Iterable[tuple]) -> list[GroupStats]:
    """Near/not-near/all statistics, per district and overall, from (district, near, value)
    rows: the same definitions as the open-source backend's pandas code (districts by label,
    nulls and NaN counted as parcels without a value, median of an even count the mean of the
    two middle values). Backends whose own statistics tools leave these undefined use this."""
    values: dict[tuple[str | None, str], list[float]] = {}
    parcels: dict[tuple[str | None, str], int] = {}
    for district, near, value in rows:
        label = district_label(district)
        cls = "near" if near == 1 else "not_near"
        number = None if value is None else float(value)
        for key in ((label, cls), (None, cls), (label, "all"), (None, "all")):
            parcels[key] = parcels.get(key, 0) + 1
            bucket = values.setdefault(key, [])
            if number is not None and not math.isnan(number):
                bucket.append(number)
    groups = []
    for key, count in parcels.items():
        vals = values[key]
        groups.append(GroupStats(key[0], key[1], Stats(
            count, len(vals), math.fsum(vals),
            statistics.fmean(vals) if vals else None,
            statistics.median(vals) if vals else None)))
    return groups


def district_label(value) -> str:
    """How a district value is shown: nulls and blanks become `(no district)`."""
    if value is None or (isinstance(value, float) and value != value) or str(value).strip() == "":
        return NO_DISTRICT
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _sort_key(name: str):
    # Numeric district codes sort as numbers; `(no district)` goes last.
    if name == NO_DISTRICT:
        return (2, 0, name)
    try:
        return (0, float(name), name)
    except ValueError:
        return (1, 0, name.casefold())


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f}"
