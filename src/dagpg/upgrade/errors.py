"""Errors of `dagpg upgrade` and `dagpg db move`: one line each, saying what to do next."""

from __future__ import annotations

from dagpg.errors import DagpgError
from dagpg.heartbeats import Heartbeat, running_refusal


class UpgradeError(DagpgError):
    """A rehearsal, upgrade, rollback or move could not be done."""


class UpgradeRefusedError(UpgradeError):
    """Doing it now would be unsafe or pointless; nothing was changed."""


class NoVerifiedBackupError(UpgradeRefusedError):
    def __init__(self, directory: str, what: str, where: str = "", other: str | None = None):
        of = f" of {where}" if other else ""
        seen = f" (the newest there is of {other})" if other else ""
        super().__init__(
            f"no verified backup{of} in {directory}{seen}, and {what} needs one; run "
            "`dagpg backup` (then `dagpg backups verify latest`) and try again")
        self.directory = directory


class NewestBackupCorruptError(UpgradeRefusedError):
    """The newest verified backup's files no longer match its manifest: the rehearsal and the
    move take no backup name, so 'use another backup' is no way out; a new backup is."""

    def __init__(self, name: str, problem: str, what: str):
        super().__init__(
            f"backup {name}, the newest verified one, failed verification: {problem}; {what} "
            "needs an intact one: take a new backup (`dagpg backup`) and try again")
        self.name = name
        self.problem = problem


class ServicesRunningError(UpgradeRefusedError):
    def __init__(self, beat: Heartbeat, limit_s: float, services: str, what: str):
        super().__init__(running_refusal(beat, limit_s, services, what))
        self.daemon_type = beat.daemon_type
        self.age_s = beat.age_s()


class SchemaAheadError(UpgradeRefusedError):
    def __init__(self, revision: str, installed: str, hint: str):
        super().__init__(
            f"the database's Dagster schema is at {revision}, which the installed Dagster "
            f"{installed} does not know: a newer Dagster wrote it; {hint}")
        self.revision = revision


class UpgradeFailedError(UpgradeError):
    """The upgrade did not complete; the message says what state the database is in."""


class MoveRefusedError(UpgradeRefusedError):
    """`dagpg db move` would be unsafe; nothing was changed."""


class MoveFailedError(UpgradeError):
    """The copy did not complete or did not match; the source is untouched."""
