"""pg_dump, pg_restore and psql: found at the server's major version or newer, run with the
password in their environment only (never on their command line), errors in one line.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from pathlib import Path

from dagpg import children
from dagpg.backup.errors import ToolFailedError
from dagpg.errors import (
    AuthenticationError,
    ConnectionLostError,
    DatabaseUnavailableError,
    ToolNotFoundError,
)
from dagpg.instance import PgTarget
from dagpg.pgbin import Program, find_program

log = logging.getLogger(__name__)

# libpq variables a child must not inherit from our own environment: ours are set explicitly.
_LIBPQ_VARS = ("PGHOST", "PGHOSTADDR", "PGPORT", "PGUSER", "PGDATABASE", "PGPASSWORD",
               "PGPASSFILE", "PGSERVICE", "PGSERVICEFILE", "PGOPTIONS", "PGSSLMODE")


def program(name: str, min_major: int) -> Program:
    """`name` from PostgreSQL `min_major` or newer; an older one is a ToolNotFoundError."""
    return find_program(name, min_major=min_major)


def companion(program: Program, name: str) -> Program:
    """`name` from the same folder as `program` (pg_restore beside pg_dump, psql beside
    pg_restore: one release reads what the other writes, e.g. psql the \\restrict lines of
    pg_restore's script), else the usual search at the same major version."""
    exe = program.path.with_name(name + program.path.suffix)
    if exe.is_file():
        return Program(name=name, path=exe, version=program.version, major=program.major)
    return find_program(name, min_major=program.major)


def child_env(target: PgTarget, database: str | None = None, app: str = "dagpg") -> dict[str, str]:
    """The environment of a libpq child: the connection (and password) go here, not on argv."""
    env = {k: v for k, v in os.environ.items() if k not in _LIBPQ_VARS}
    env.update(target.libpq_env())
    if database:
        env["PGDATABASE"] = database
    env["PGAPPNAME"] = app
    env.setdefault("PGCONNECT_TIMEOUT", "10")
    return env


def dump_argv(pg_dump: Program, path: Path, *, snapshot: str | None) -> list[str]:
    """`pg_dump -Fc` of PGDATABASE into `path`. -w: never prompt (unattended runs)."""
    argv = [str(pg_dump.path), "--format=custom", "--no-password", f"--file={path}"]
    if snapshot:
        argv.append(f"--snapshot={snapshot}")
    return argv


def run(argv: list[str], target: PgTarget, *, database: str | None = None,
        timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run a libpq program to completion; a non-zero exit becomes a one-line DagpgError."""
    log.info("running %s", " ".join(argv))
    result = children.run(argv, env=child_env(target, database), capture_output=True,
                          text=True, timeout=timeout)
    if result.returncode != 0:
        raise failure(Path(argv[0]).stem, result.returncode, result.stderr, target, database)
    return result


def failure(name: str, returncode: int, stderr: str, target: PgTarget,
            database: str | None = None) -> Exception:
    """The one-line error for a failed pg_dump/pg_restore/psql (libpq never prints passwords)."""
    where = f"{target.host}:{target.port}/{database or target.database}"
    text = stderr or ""
    lowered = text.lower()
    if "password authentication failed" in lowered or "no password supplied" in lowered:
        return AuthenticationError(where, target.user, target.password_variable)
    if "connection refused" in lowered or "could not connect" in lowered:
        return DatabaseUnavailableError(
            where, "connection refused",
            "is the server running? (for the local server: `dagpg db status`)")
    for gone in ("server closed the connection unexpectedly",
                 "terminating connection due to administrator command",
                 "the database system is shutting down", "connection to server was lost"):
        if gone in lowered:
            return ConnectionLostError(where, gone, f"running {name}")
    if "unsupported version" in lowered and "file header" in lowered:
        return ToolNotFoundError(
            f"{name} is older than the pg_dump that wrote the archive ({last_line(text)}); "
            "install newer PostgreSQL client programs and set DAGPG_PG_BINDIR")
    if returncode < 0:
        try:
            sig = signal.Signals(-returncode).name
        except ValueError:
            sig = f"signal {-returncode}"
        detail = f"killed by {sig}" + (" (file size limit exceeded)" if sig == "SIGXFSZ" else "")
    else:
        detail = last_line(text) or f"exit code {returncode}"
    return ToolFailedError(f"{name} failed: {detail}")


def last_line(text: str) -> str:
    """The most telling line of a PostgreSQL program's stderr, without its `prog: error:`."""
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error:" in ln.lower() or "fatal:" in ln.lower()]
    line = (errors or lines or [""])[0 if errors else -1]
    for prefix in ("pg_dump: error: ", "pg_restore: error: ", "psql: error: "):
        line = line.removeprefix(prefix)
    for marker in ("ERROR:", "FATAL:"):  # psql:<stdin>:123: ERROR:  ...
        if line.startswith("psql:") and marker in line:
            line = line.split(marker, 1)[1].strip()
    return line
