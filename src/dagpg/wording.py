"""Counts in the kit's lines: "1 run", "2 old backups", "1,000 events" (never "1 backups").

The pipeline has its own (`arcpy_orchestration.wording`): the two packages never import each
other."""

from __future__ import annotations


def count(n: int, noun: str, plural: str | None = None) -> str:
    """`n` with thousands separators and the noun in the number it needs."""
    return f"{n:,} {noun if n == 1 else (plural or noun + 's')}"


def days_left(days: float | None) -> str:
    """Days until a disk is full, as a person reads it: "45 days", "over 10 years", "-" unknown.
    A fresh instance grows a few kB a day, which would read as millions of days."""
    if days is None:
        return "-"
    if days > 3650:
        return "over 10 years"
    return count(round(days), "day")
