"""What one prune deletes: the two cutoffs, the protections and the batch limits, from
`dagpg.retention` in config.yml with a caller's overrides applied."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from dagpg.prune.errors import AgeError
from dagpg.settings import KitSettings

TIERS = ("logs", "runs")
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$", re.IGNORECASE)
_UNITS = {"": 86400, "d": 86400, "day": 86400, "days": 86400, "h": 3600, "hr": 3600,
          "hrs": 3600, "hour": 3600, "hours": 3600, "m": 60, "min": 60, "mins": 60,
          "minute": 60, "minutes": 60, "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
          "w": 7 * 86400, "week": 7 * 86400, "weeks": 7 * 86400, "mo": 30 * 86400,
          "month": 30 * 86400, "months": 30 * 86400, "y": 365 * 86400, "year": 365 * 86400,
          "years": 365 * 86400}
_BEGINNING = datetime(1, 1, 2, tzinfo=UTC)  # an age reaching before this: nothing is that old


@dataclass(frozen=True)
class Policy:
    """`logs_before`/`runs_before`: finished runs last updated before these lose their logs /
    are deleted; None switches that tier off."""

    now: datetime
    logs_before: datetime | None
    runs_before: datetime | None
    keep_last_runs: int
    batch_rows: int
    lock_timeout_ms: int
    statement_timeout_s: float

    @property
    def oldest_cutoff(self) -> datetime | None:
        """Runs updated before this are candidates of at least one tier."""
        cutoffs = [c for c in (self.logs_before, self.runs_before) if c is not None]
        return max(cutoffs) if cutoffs else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "now": self.now.isoformat(),
            "logs_before": self.logs_before.isoformat() if self.logs_before else None,
            "runs_before": self.runs_before.isoformat() if self.runs_before else None,
            "keep_last_runs": self.keep_last_runs,
            "batch_rows": self.batch_rows,
            "lock_timeout_ms": self.lock_timeout_ms,
            "statement_timeout_s": self.statement_timeout_s,
        }


def make_policy(
    settings: KitSettings,
    *,
    older_than: str | float | None = None,
    logs_older_than: str | float | None = None,
    runs_older_than: str | float | None = None,
    keep_last_runs: int | None = None,
    batch_rows: int | None = None,
    only: str | None = None,
    now: datetime | None = None,
) -> Policy:
    """The policy of one prune. Ages are days (a number), a number with a unit (`12h`, `30d`,
    `8w`, `6mo`, `1y`) or a date/time (ISO 8601, UTC unless it says otherwise). `older_than`
    is the runs tier's age (`runs_older_than`), or the logs tier's when `only` is "logs". Raises
    AgeError or ConfigurationError for values that make no sense."""
    from dagpg.errors import ConfigurationError

    now = now or datetime.now(UTC)
    retention = settings.retention
    if only is not None and only not in TIERS:
        raise ConfigurationError(f"--only {only!r}: choose one of {', '.join(TIERS)}")
    tier = "logs" if only == "logs" else "runs"
    given = logs_older_than if tier == "logs" else runs_older_than
    if older_than is not None and given is not None:
        raise ConfigurationError(f"give --older-than or --{tier}-older-than, not both")
    logs_option, runs_option = "--logs-older-than", "--runs-older-than"
    if older_than is not None:
        if tier == "logs":
            logs_older_than, logs_option = older_than, "--older-than"
        else:
            runs_older_than, runs_option = older_than, "--older-than"
    logs = cutoff(logs_older_than, logs_option, now) if logs_older_than is not None \
        else _days_before(now, retention.logs_days)
    runs = cutoff(runs_older_than, runs_option, now) if runs_older_than is not None \
        else _days_before(now, retention.runs_days)
    keep = retention.keep_last_runs if keep_last_runs is None else keep_last_runs
    batch = retention.batch_rows if batch_rows is None else batch_rows
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ConfigurationError(f"--keep-last-runs {keep!r}: give a whole number, 1 or more")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ConfigurationError(f"--batch-rows {batch!r}: give a whole number, 1 or more")
    return Policy(
        now=now,
        logs_before=None if only == "runs" else logs,
        runs_before=None if only == "logs" else runs,
        keep_last_runs=keep,
        batch_rows=batch,
        lock_timeout_ms=retention.lock_timeout_ms,
        statement_timeout_s=retention.statement_timeout_s,
    )


def cutoff(value: str | float, option: str, now: datetime) -> datetime:
    """`now` minus an age, or a date: the moment before which a run counts as old."""
    if isinstance(value, bool):
        raise AgeError(option, str(value), "not an age")
    if isinstance(value, int | float):
        return _before(now, _days(value, option, str(value)))
    text = str(value).strip()
    if text.startswith("-"):
        raise AgeError(option, text, "must be more than 0")
    match = _AGE.match(text)
    if match:
        unit = match.group(2).lower()
        if unit not in _UNITS:
            raise AgeError(option, text, f"unknown unit {match.group(2)!r}")
        seconds = float(match.group(1)) * _UNITS[unit]
        return _before(now, _days(seconds / 86400, option, text))
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise AgeError(option, text, "not an age or a date") from None
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    if moment > now:
        raise AgeError(option, text, "a date in the future would prune everything")
    return moment


def _before(now: datetime, age: timedelta) -> datetime:
    """`now - age`, or the beginning of time for an age longer than the calendar (keep all)."""
    try:
        return max(now - age, _BEGINNING)
    except OverflowError:
        return _BEGINNING


def _days_before(now: datetime, days: float) -> datetime:
    try:
        return _before(now, timedelta(days=days))
    except OverflowError:  # .inf days in config.yml: keep all
        return _BEGINNING


def _days(days: float, option: str, text: str) -> timedelta:
    if not math.isfinite(days) or days <= 0:
        raise AgeError(option, text, "must be more than 0")
    try:
        return timedelta(days=days)
    except OverflowError:
        raise AgeError(option, text, "too large") from None
