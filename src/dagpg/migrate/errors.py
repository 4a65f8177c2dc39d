"""What can stop `dagpg migrate-from-sqlite`. Each message is one line: what is wrong, what to do.

Nothing is written to the source in any case; a failure after the copy started leaves the
target resumable (run the same command again).
"""

from __future__ import annotations

from dagpg.errors import ConfigurationError, DagpgError


class MigrateError(DagpgError):
    """The migration could not run or finish."""


class SourceError(ConfigurationError):
    """SOURCE is not a usable Dagster SQLite instance; nothing was read or written."""


class SourceNotFoundError(SourceError):
    def __init__(self, given: str, looked_for: str):
        super().__init__(
            f"{given}: no Dagster SQLite storage found ({looked_for} does not exist); pass the "
            "old DAGSTER_HOME (holding dagster.yaml) or its SQLite base_dir"
        )
        self.given = given


class SourceNotSqliteError(SourceError):
    def __init__(self, yaml_path: str, found: str):
        super().__init__(
            f"{yaml_path}: storage is {found}, not SQLite; nothing to migrate from there"
        )


class UnreadableSourceError(SourceError):
    def __init__(self, path: str, reason: str):
        super().__init__(
            f"cannot read {path}: {reason}; give the user running dagpg read access to the "
            "whole SQLite folder and run again"
        )
        self.path = path


class CorruptSourceError(SourceError):
    def __init__(self, path: str, reason: str):
        super().__init__(
            f"{path} is not a readable Dagster SQLite database ({reason}); restore it from a "
            "backup, then run again"
        )
        self.path = path


class MissingShardError(SourceError):
    def __init__(self, path: str, run_id: str, events: int):
        super().__init__(
            f"{path} is missing, but index.db holds {events} event(s) of run {run_id}; "
            "restore the file from a backup, then run again"
        )
        self.path = path
        self.run_id = run_id


class SourceTooNewError(SourceError):
    def __init__(self, path: str, revision: str, dagster_version: str, head: str):
        super().__init__(
            f"{path} is at Dagster schema revision {revision}, unknown to the installed Dagster "
            f"{dagster_version} (head {head}); install the Dagster version that wrote it "
            "(with its dagster-postgres) and run again"
        )
        self.revision = revision


class SourceInUseError(MigrateError):
    def __init__(self, daemon_type: str, age_s: float, threshold_s: float):
        super().__init__(
            f"the SQLite instance's {daemon_type} daemon heart-beat {age_s:.0f}s ago (less than "
            f"{threshold_s:.0f}s): stop dagster-daemon and dagster-webserver first, or pass "
            "--force if they are already stopped"
        )
        self.age_s = age_s


class TargetNotEmptyError(MigrateError):
    def __init__(self, where: str, what: str):
        super().__init__(
            f"target {where} already holds Dagster history ({what}); point --dagster-home at "
            "an instance with an empty database"
        )


class TargetHasOtherMigrationError(MigrateError):
    def __init__(self, where: str, source: str, status: str):
        super().__init__(
            f"target {where} holds a {status} migration from another source ({source}); "
            "re-run it with that SOURCE, or migrate into an empty database"
        )


class TargetBusyError(MigrateError):
    def __init__(self, where: str):
        super().__init__(
            f"another `dagpg migrate-from-sqlite` is writing into {where}; wait for it to end"
        )


class VerificationError(MigrateError):
    def __init__(self, count: int, first: str):
        super().__init__(
            f"verification found {count} difference(s) between the SQLite and PostgreSQL "
            f"instances, first: {first}; see the report (--json), fix the cause and run again"
        )
        self.count = count


class HelperProcessError(MigrateError):
    """A helper process of the migration stopped; carries its message and exit code, which
    the CLI uses as its own (the same as if the work had run in this process)."""

    def __init__(self, message: str, exit_code: int = 1, trace: str = ""):
        super().__init__(message)
        self.exit_code = exit_code
        self.trace = trace

    @classmethod
    def from_relay(cls, relayed: dict) -> HelperProcessError:
        """The error a helper sent with `relay()`."""
        return cls(relayed["message"], relayed["exit_code"], relayed["traceback"])


class CopyProcessError(HelperProcessError):
    """The child process rendering events (pump.py) stopped."""


class VerifyProcessError(HelperProcessError):
    """The child process comparing events (verify_worker.py) stopped."""


def relay(exc: BaseException) -> dict:
    """What a helper process sends its parent about the error that stopped it: a DagpgError's
    one line and exit code as they are, anything else with its traceback (logged there)."""
    import traceback

    known = isinstance(exc, DagpgError)
    return {"message": str(exc) if known else f"{type(exc).__name__}: {exc}",
            "exit_code": exc.exit_code if known else 1,
            "traceback": "" if known else "".join(traceback.format_exception(exc))}
