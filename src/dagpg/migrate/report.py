"""What a migration reports: the plan, per-table and per-run counts, warnings, verification.

Library code fills these in; the CLI renders them (text or --json).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MAX_EXAMPLES = 3


@dataclass
class Warning_:
    kind: str      # orphan | too_long | cursor | invalid | index_only | note
    table: str
    message: str
    count: int = 0
    examples: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"kind": self.kind, "table": self.table, "message": self.message,
                "count": self.count, "examples": self.examples}


class Warnings:
    """Warnings aggregated by (kind, table, message), with a few examples each.

    The warnings of a copy unit are also kept apart until `drain()`, which the copier stores
    with the unit's step; a resumed migration `load()`s them back, so its report is complete.
    """

    def __init__(self) -> None:
        self._items: dict[tuple[str, str, str], Warning_] = {}
        self._pending: dict[tuple[str, str, str], Warning_] = {}

    def add(self, kind: str, table: str, message: str, example: Any = None, count: int = 1):
        for items in (self._items, self._pending):
            _merge(items, kind, table, message, count,
                   [] if example is None else [_short(example)])

    def drain(self) -> list[dict]:
        """The warnings added since the last drain (to store with a committed unit)."""
        out = [w.as_dict() for w in self._pending.values()]
        self._pending.clear()
        return out

    def discard_pending(self) -> None:
        self._pending.clear()

    def load(self, stored: list[dict]) -> None:
        for w in stored:
            _merge(self._items, w["kind"], w["table"], w["message"], w["count"], w["examples"])

    def items(self) -> list[Warning_]:
        return list(self._items.values())

    def __len__(self) -> int:
        return len(self._items)


def _merge(items, kind, table, message, count, examples) -> None:
    item = items.setdefault((kind, table, message), Warning_(kind, table, message))
    item.count += count
    for example in examples:
        if len(item.examples) < MAX_EXAMPLES:
            item.examples.append(example)


def _short(example: Any) -> str:
    text = str(example)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass
class Difference:
    check: str
    key: str
    detail: str

    def __str__(self) -> str:
        return f"{self.check} {self.key}: {self.detail}"

    def as_dict(self) -> dict:
        return {"check": self.check, "key": self.key, "detail": self.detail}


@dataclass
class Verification:
    compared: dict[str, int] = field(default_factory=dict)  # check -> items compared
    differences: list[Difference] = field(default_factory=list)
    difference_count: int = 0
    expected: list[str] = field(default_factory=list)  # skipped on purpose (see warnings)

    def count(self, check: str, n: int = 1) -> None:
        self.compared[check] = self.compared.get(check, 0) + n

    def differ(self, check: str, key: str, detail: str) -> None:
        self.difference_count += 1
        if len(self.differences) < 50:
            self.differences.append(Difference(check, key, detail[:500]))

    @property
    def ok(self) -> bool:
        return self.difference_count == 0

    def as_dict(self) -> dict:
        return {"ok": self.ok, "compared": self.compared,
                "difference_count": self.difference_count,
                "differences": [d.as_dict() for d in self.differences],
                "expected": self.expected}


@dataclass
class TableCount:
    table: str
    source: int
    target: int | None = None
    note: str = ""

    @property
    def equal(self) -> bool:
        return self.source == self.target

    def as_dict(self) -> dict:
        return {"table": self.table, "source": self.source, "target": self.target,
                "equal": self.equal, "note": self.note}


@dataclass
class MigrationReport:
    source: dict
    target: str
    dagster_version: str
    dry_run: bool = False
    migration_id: int | None = None
    resumed: bool = False
    revisions: dict = field(default_factory=dict)
    plan: dict = field(default_factory=dict)
    tables: list[TableCount] = field(default_factory=list)
    runs_compared: int = 0
    runs_differing: list[dict] = field(default_factory=list)
    warnings: Warnings = field(default_factory=Warnings)
    verification: Verification | None = None
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    status: str = "planned"

    @property
    def ok(self) -> bool:
        return self.verification is None or self.verification.ok

    def events_per_s(self) -> float | None:
        events = self.plan.get("events", {}).get("total")
        seconds = self.timings.get("events")
        return round(events / seconds, 1) if events and seconds else None

    def as_dict(self) -> dict:
        return {
            "status": self.status, "ok": self.ok, "dry_run": self.dry_run,
            "migration_id": self.migration_id, "resumed": self.resumed,
            "source": self.source, "target": self.target,
            "dagster_version": self.dagster_version, "revisions": self.revisions,
            "plan": self.plan, "tables": [t.as_dict() for t in self.tables],
            "runs": {"compared": self.runs_compared, "differing": self.runs_differing},
            "warnings": [w.as_dict() for w in self.warnings.items()],
            "verification": self.verification.as_dict() if self.verification else None,
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
            "events_per_s": self.events_per_s(), "notes": self.notes,
        }
