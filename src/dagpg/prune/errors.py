"""Errors of `dagpg prune` and `dagpg stats`: one line each, saying what is wrong and what to do."""

from __future__ import annotations

from dagpg.errors import ConfigurationError, DagpgError


class PruneError(DagpgError):
    """The history could not be pruned; what was committed stays consistent, run it again."""


class AgeError(ConfigurationError):
    """An age or a date given to --older-than (and friends) does not parse."""

    def __init__(self, option: str, value: str, reason: str):
        super().__init__(
            f"{option} {value!r}: {reason}; give days (30), a number with a unit (12h, 30d, 8w) "
            "or a date (2025-01-31)")
        self.option = option
        self.value = value


class NoRecentBackupError(PruneError):
    """Pruning cannot be undone: it waits for a recent verified backup, or --force."""

    def __init__(self, newest: str | None, age_h: float | None, max_age_h: float):
        if newest is None:
            found = "there is no verified backup in the catalog"
        else:
            found = f"the newest verified backup, {newest}, is {age_h:.1f} h old"
        super().__init__(
            f"{found} (limit dagpg.verify.backup_max_age_h = {max_age_h:g} h) and pruning cannot "
            "be undone; run `dagpg backup` first, or pass --force to prune without one")
        self.newest = newest
        self.age_h = age_h


class PruneInProgressError(PruneError):
    def __init__(self, where: str, holder: str):
        super().__init__(
            f"another dagpg prune of {where} is running ({holder}); wait for it to finish and "
            "run the command again")


class PruneIncompleteError(PruneError):
    """A batch failed again and again (locks, timeouts) or the connection was lost midway."""

    def __init__(self, reason: str, report=None):
        super().__init__(
            f"prune stopped before it was done: {reason}; everything committed so far is "
            "consistent, run the same command again to finish")
        self.reason = reason
        self.report = report  # the PruneReport of what was done before it stopped
