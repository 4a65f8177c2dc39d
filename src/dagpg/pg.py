"""Connections to an instance's PostgreSQL: retries with backoff, errors in one plain sentence.

The password is passed to libpq as a keyword, never inside a URL or a command line.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from psycopg2 import sql

from dagpg.errors import (
    AuthenticationError,
    ConnectionLostError,
    DagpgError,
    DatabaseUnavailableError,
)
from dagpg.instance import PgTarget

if TYPE_CHECKING:
    import sqlalchemy

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5


def connect(
    target: PgTarget,
    *,
    database: str | None = None,
    retries: int = 2,
    timeout: float = CONNECT_TIMEOUT_S,
    autocommit: bool = False,
) -> psycopg2.extensions.connection:
    """A psycopg2 connection to `target` (or another `database` on the same server)."""
    kwargs = dict(
        host=target.host,
        port=target.port,
        dbname=database or target.database,
        user=target.user,
        connect_timeout=max(1, int(timeout)),
        application_name="dagpg",
    )
    if target.password:
        kwargs["password"] = target.password
    if "sslmode" in target.params:
        kwargs["sslmode"] = target.params["sslmode"]
    attempt = 0
    while True:
        try:
            conn = psycopg2.connect(**kwargs)
            conn.autocommit = autocommit
            return conn
        except psycopg2.OperationalError as exc:
            error = translate(exc, target, database)
            if isinstance(error, AuthenticationError) or attempt >= retries:
                raise error from None
            attempt += 1
            delay = 0.2 * 2 ** (attempt - 1) * random.uniform(0.5, 1.5)
            log.debug("connection to %s failed (%s); retrying in %.2fs", target.where, exc, delay)
            time.sleep(delay)


@contextlib.contextmanager
def connection(target: PgTarget, **kwargs) -> Iterator[psycopg2.extensions.connection]:
    """`connect()` as a context manager that commits on success and always closes."""
    conn = connect(target, **kwargs)
    try:
        if conn.autocommit:
            yield conn
        else:
            with conn:  # commit on success, roll back on error
                yield conn
    finally:
        conn.close()


def engine(target: PgTarget, *, database: str | None = None) -> sqlalchemy.Engine:
    """A SQLAlchemy engine whose connections come from `connect()` (no URL holds a password)."""
    import sqlalchemy  # here, not at the top: commands that do not need it start faster
    from sqlalchemy.pool import NullPool

    return sqlalchemy.create_engine(
        "postgresql+psycopg2://",
        creator=lambda: connect(target, database=database),
        poolclass=NullPool,
    )


def translate(
    exc: psycopg2.OperationalError, target: PgTarget, database: str | None = None
) -> Exception:
    """One plain sentence for a failed connection. libpq's text never holds the password."""
    where = f"{target.host}:{target.port}/{database or target.database}"
    text = str(exc).strip()
    lowered = text.lower()
    if "password authentication failed" in lowered or "no password supplied" in lowered:
        return AuthenticationError(where, target.user, target.password_variable)
    if "does not exist" in lowered and "database" in lowered:
        return DatabaseUnavailableError(
            where, f"database {database or target.database!r} does not exist",
            "create it (for the local server: `dagpg db up`)",
        )
    if "role" in lowered and "does not exist" in lowered:
        return DatabaseUnavailableError(
            where, f"role {target.user!r} does not exist",
            "create it (for the local server: `dagpg db up`)",
        )
    if "connection refused" in lowered or "could not connect" in lowered:
        reason = "connection refused"
    elif "timeout" in lowered or "timed out" in lowered:
        reason = "timed out"
    elif "could not translate host name" in lowered:
        reason = f"unknown host {target.host!r}"
    else:
        reason = text.splitlines()[-1] if text else type(exc).__name__
    return DatabaseUnavailableError(
        where, reason, "is the server running? (for the local server: `dagpg db status`)"
    )


# SQLSTATEs of a server going away: class 08 (connection exception), admin/crash shutdown,
# "the database system is shutting down / starting up".
_GONE_STATES = ("57P01", "57P02", "57P03")


def lost_connection_reason(exc: BaseException) -> str | None:
    """The reason, in libpq's words, when `exc` (psycopg2's, SQLAlchemy's or Dagster's, or
    anything they caused) means the connection to the server was lost or refused; else None.
    A statement the server rejected (a constraint, a timeout) is not a lost connection."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, DagpgError):
            return None  # already one line
        if isinstance(exc, psycopg2.InterfaceError):
            # "connection already closed" from a rollback or a later query: the server's own
            # words (what closed it) are in the error it raises during, when there is one
            during = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
            return ((lost_connection_reason(during) if during is not None else None)
                    or (str(exc).strip().splitlines()[0] if str(exc).strip()
                        else "connection closed"))
        if isinstance(exc, psycopg2.OperationalError):
            code = getattr(exc, "pgcode", None)
            if code is None or code.startswith("08") or code in _GONE_STATES:
                text = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
                return text[0] if text else type(exc).__name__
            return None
        exc = (getattr(exc, "orig", None) or exc.__cause__
               or (None if exc.__suppress_context__ else exc.__context__))
    return None


@contextlib.contextmanager
def lost_connection(target: PgTarget, doing: str | Callable[[], str] = "") -> Iterator[None]:
    """Turn a connection lost inside the block into one ConnectionLostError naming `target`
    and what was being done (a string, or a function giving it at the time)."""
    try:
        yield
    except Exception as exc:
        if isinstance(exc, ConnectionLostError):
            raise
        reason = lost_connection_reason(exc)
        if reason is None:
            raise
        log.debug("connection to %s lost", target.where, exc_info=True)
        raise ConnectionLostError(target.where, reason,
                                  doing() if callable(doing) else doing) from None


def server_version(conn: psycopg2.extensions.connection) -> tuple[int, str]:
    """(major, full version string) of the server behind `conn`."""
    num = conn.server_version  # e.g. 150018
    major = num // 10000
    with conn.cursor() as cur:
        cur.execute("SHOW server_version")
        return major, cur.fetchone()[0]


def create_scratch_database(conn: psycopg2.extensions.connection, name: str, *,
                            error: type[DagpgError], needed_by: str, otherwise: str = "") -> None:
    """`CREATE DATABASE name TEMPLATE template0` on an autocommit `conn`. A role without CREATEDB
    raises `error`: one line naming `needed_by` (what needs the database), the grant, and
    `otherwise` (another way out, e.g. " or verify without --restore-test")."""
    user = conn.info.user
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(
                sql.Identifier(name)))
    except psycopg2.errors.InsufficientPrivilege:
        raise error(f"role {user!r} may not create databases, which {needed_by} needs for its "
                    f"scratch database; grant it (ALTER ROLE {user} CREATEDB){otherwise}"
                    ) from None


def drop_database(conn: psycopg2.extensions.connection, name: str) -> None:
    """`DROP DATABASE IF EXISTS name` on an autocommit `conn`, ending its sessions (PostgreSQL
    13 and later: WITH (FORCE))."""
    force = sql.SQL(" WITH (FORCE)") if conn.server_version >= 130000 else sql.SQL("")
    with conn.cursor() as cur:
        cur.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)) + force)
