"""Counts in the kit's lines: "1 run", "2 old backups", "1,000 events" (never "1 backups").

The pipeline has its own (`arcpy_orchestration.wording`): the two packages never import each
other."""

from __future__ import annotations


def count(n: int, noun: str, plural: str | None = None) -> str:
    """`n` with thousands separators and the noun in the number it needs."""
    return f"{n:,} {noun if n == 1 else (plural or noun + 's')}"
