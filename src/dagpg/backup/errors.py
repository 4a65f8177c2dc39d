"""Errors of the backup subsystem: one line each, saying what is wrong and what to do next."""

from __future__ import annotations

from dagpg.errors import DagpgError


class BackupError(DagpgError):
    """A backup, verification, prune or restore could not be done."""


class BackupInProgressError(BackupError):
    def __init__(self, where: str):
        super().__init__(
            f"another dagpg backup or restore of {where} is running (its advisory lock is "
            "held); wait for it to finish and run the command again"
        )


class DestinationError(BackupError):
    def __init__(self, path: str, reason: str):
        super().__init__(
            f"cannot write backups to {path}: {reason}; choose a writable folder with --dest "
            "or dagpg.backup.directory in config/config.yml"
        )
        self.path = path


class BackupNotFoundError(BackupError):
    def __init__(self, name: str, directory: str):
        super().__init__(
            f"no backup named {name!r} in {directory}; run `dagpg backups list` to see the "
            "backups, or give the path of a backup folder"
        )
        self.name = name


class BackupCorruptError(BackupError):
    def __init__(self, name: str, problem: str):
        super().__init__(
            f"backup {name} failed verification: {problem}; do not restore it, use another "
            "backup (`dagpg backups list`)"
        )
        self.name = name
        self.problem = problem


class ToolFailedError(BackupError):
    """pg_dump, pg_restore or psql exited with an error."""


class RestoreRefusedError(BackupError):
    """Restoring now would be unsafe (e.g. the daemon is still running)."""


class RestoreFailedError(BackupError):
    """The restore did not complete; the message says what state things are in."""
