"""The outcome of `dagpg verify`: every check's result, the exit code, and a text rendering."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dagpg.errors import EXIT_FAILURE
from dagpg.verify.checks import FAIL, OK, SKIP, WARN, CheckResult

_STATUS_TEXT = {OK: "ok", WARN: "WARN", FAIL: "FAIL", SKIP: "skip"}


@dataclass
class Report:
    checks: list[CheckResult]
    elapsed_s: float = 0.0
    instance: dict[str, Any] | None = None
    services: dict[str, Any] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        return {s: sum(c.status == s for c in self.checks) for s in (OK, WARN, FAIL, SKIP)}

    @property
    def ok(self) -> bool:
        """Passes when nothing failed: warnings and skipped checks pass."""
        return not any(c.status == FAIL for c in self.checks)

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else EXIT_FAILURE

    def check(self, name: str) -> CheckResult:
        return next(c for c in self.checks if c.name == name)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "exit_code": self.exit_code,
            "elapsed_s": round(self.elapsed_s, 3),
            "counts": self.counts,
            "instance": self.instance,
            "services": self.services,
            "checks": [c.as_dict() for c in self.checks],
        }

    def lines(self) -> list[str]:
        """A table for people: status, check, detail; then one summary line."""
        width = max((len(c.title) for c in self.checks), default=0)
        out = [f"{_STATUS_TEXT[c.status]:<4}  {c.title.ljust(width)}  {c.detail}"
               for c in self.checks]
        counts = self.counts
        verdict = "healthy" if self.ok else "NOT healthy"
        out.append(
            f"{verdict}: {counts[OK]} ok, {counts[WARN]} warnings, {counts[FAIL]} failed, "
            f"{counts[SKIP]} skipped ({self.elapsed_s:.1f} s)"
        )
        return out
