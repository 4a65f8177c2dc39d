"""What a keeper's pass reports: events (one line each in its log) and the pass itself."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dagpg.verify import checks

INFO, WARNING, ERROR = "info", "warning", "error"


@dataclass(frozen=True)
class Event:
    """One line of the keeper's log: a finding, an action, or what it is doing."""

    event: str  # startup | finding | waiting | action | gave_up | recovered | standby | ...
    level: str
    detail: str
    target: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = {"level": self.level, "event": self.event, "target": self.target,
               "detail": self.detail}
        if self.data:
            out["data"] = self.data
        return out


@dataclass
class PassResult:
    number: int
    acting: bool
    events: list[Event]
    checks: list[checks.CheckResult]
    elapsed_s: float = 0.0

    @property
    def actions(self) -> list[Event]:
        return [e for e in self.events if e.event == "action"]

    @property
    def ok(self) -> bool:
        """Nothing left wrong: no error, and every finding was acted on successfully."""
        if any(e.level == ERROR for e in self.events):
            return False
        acted = {e.target for e in self.actions}
        return all(e.target in acted for e in self.events if e.event == "finding")

    def as_dict(self) -> dict[str, Any]:
        return {"pass": self.number, "acting": self.acting, "ok": self.ok,
                "elapsed_s": round(self.elapsed_s, 3),
                "checks": [c.as_dict() for c in self.checks],
                "events": [e.as_dict() for e in self.events]}


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
