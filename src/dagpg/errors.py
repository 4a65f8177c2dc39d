"""dagpg's one error base. Raised by the library, turned into one line by the CLI (cli/__init__.py).

Every message says what is wrong and what to do next. Messages never carry a password.
"""

from __future__ import annotations

# Exit codes, named once; only dagpg.cli exits.
EXIT_FAILURE = 1  # the operation failed, or a check did
EXIT_CONFIG = 2  # bad usage or configuration: nothing was attempted
EXIT_NOT_RUNNING = 3  # `dagpg db status`: the local server is not running (as `pg_ctl status`)


class DagpgError(Exception):
    """Base of every error dagpg raises on purpose."""

    exit_code = EXIT_FAILURE


class ConfigurationError(DagpgError):
    """The environment or a configuration file is wrong; nothing was attempted."""

    exit_code = EXIT_CONFIG


class InstanceError(ConfigurationError):
    """DAGSTER_HOME or its dagster.yaml cannot be used."""


class NotPostgresError(InstanceError):
    def __init__(self, yaml_path: str, found: str):
        super().__init__(
            f"{yaml_path}: storage is {found}, not PostgreSQL; configure `storage: postgres:` "
            "(see dagster_home/dagster.yaml), or migrate with `dagpg migrate-from-sqlite`"
        )
        self.found = found


class MissingPasswordError(ConfigurationError):
    def __init__(self, variable: str):
        super().__init__(
            f"environment variable {variable} is not set; set it to the PostgreSQL password "
            "of the instance (in both services' environments on a server)"
        )
        self.variable = variable


class EmptyPasswordError(MissingPasswordError):
    """The variable exists but holds nothing: libpq would try no password at all, and the server
    would answer with a rejected login that hides the real cause."""

    def __init__(self, variable: str):
        ConfigurationError.__init__(
            self,
            f"environment variable {variable} is set but empty; set it to the PostgreSQL "
            "password of the instance (in both services' environments on a server)"
        )
        self.variable = variable


class ToolNotFoundError(ConfigurationError):
    """A PostgreSQL program (initdb, pg_dump, ...) is missing or too old."""


class DatabaseError(DagpgError):
    """PostgreSQL could not be reached or refused us."""


class DatabaseUnavailableError(DatabaseError):
    def __init__(self, where: str, reason: str, hint: str):
        super().__init__(f"cannot connect to PostgreSQL at {where}: {reason}; {hint}")
        self.where = where
        self.reason = reason


class AuthenticationError(DatabaseError):
    def __init__(self, where: str, user: str, variable: str | None):
        source = f"check {variable}" if variable else "check the password in dagster.yaml"
        super().__init__(
            f"PostgreSQL at {where} rejected the password for user {user!r}; {source}"
        )
        self.where = where
        self.user = user


class SchemaNotAtHeadError(DatabaseError):
    def __init__(self, which: str, current: str | None, head: str):
        super().__init__(
            f"{which} schema is at {current or 'nothing'}, not at head {head}; "
            "run `dagpg db upgrade`"
        )
        self.which = which
        self.current = current
        self.head = head


class SchemaIncompleteError(DatabaseError):
    def __init__(self, where: str, revision: str, what: str):
        super().__init__(
            f"Dagster's schema in {where} is stamped {revision} but lacks {what}, and it holds "
            "history, so it is not rebuilt; restore the database from a backup "
            "(`dagpg restore latest`), or migrate its history into an empty database"
        )
        self.where = where
        self.revision = revision


class ConnectionLostError(DatabaseError):
    def __init__(self, where: str, reason: str, doing: str = ""):
        at = f" at {where}" if where else ""
        during = f" while {doing}" if doing else ""
        super().__init__(
            f"lost the connection to PostgreSQL{at}{during} ({reason}); check that the server "
            "runs (for the local server: `dagpg db status`, `dagpg db up`), then run the same "
            "command again"
        )
        self.where = where
        self.reason = reason


class LocalDbError(DagpgError):
    """The project-local PostgreSQL cluster (`dagpg db ...`) could not be managed."""


class PortInUseError(LocalDbError):
    def __init__(self, host: str, port: int, yaml_path: str):
        super().__init__(
            f"port {port} on {host} is already in use by another program; stop it, or set a "
            f"free port in {yaml_path} (storage.postgres.postgres_db.port) and run "
            "`dagpg db up` again"
        )
        self.host = host
        self.port = port
