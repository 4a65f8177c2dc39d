"""Load a dump into a database in one transaction: all of it, checked, or nothing.

pg_restore turns the archive into SQL; psql runs it. Between them this module writes BEGIN, the
removal of what the archive will re-create, and, only once pg_restore has finished cleanly, a
check of every table's row count against the manifest and COMMIT. If anything fails on the way
(pg_restore, a statement, a count), psql ends without COMMIT and PostgreSQL rolls the whole
transaction back: the database is exactly as it was.
"""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
from pathlib import Path

from dagpg import children
from dagpg.backup import manifest as mf
from dagpg.backup import tools
from dagpg.backup.errors import ToolFailedError
from dagpg.instance import PgTarget
from dagpg.pgbin import Program
from dagpg.progress import ProgressFn, reporter

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_REPORT_EVERY = 256 << 20
_COMMITTED = "dagpg: restore committed"
LOCK_TIMEOUT = "30s"


def load_dump(
    target: PgTarget,
    dump: Path,
    row_counts: dict[str, int],
    *,
    pg_restore: Program,
    psql: Program,
    database: str | None = None,
    progress: ProgressFn | None = None,
) -> None:
    """Replace the contents of `database` (default: the target's) with `dump`, atomically."""
    say = reporter(progress)
    schemas = archive_schemas(pg_restore, target, dump)
    restore_argv = [str(pg_restore.path), "--no-owner", "--no-acl", "--file=-", str(dump)]
    psql_argv = [str(psql.path), "--no-psqlrc", "--quiet", "--no-password",
                 "--set=ON_ERROR_STOP=1", "--file=-"]
    env = tools.child_env(target, database, app="dagpg-restore")
    log.info("running %s | %s", " ".join(restore_argv), " ".join(psql_argv))
    with tempfile.TemporaryFile() as restore_err, tempfile.TemporaryFile() as psql_out:
        loader = children.popen(psql_argv, env=env, stdin=subprocess.PIPE, stdout=psql_out,
                                stderr=subprocess.STDOUT)
        reader = children.popen(restore_argv, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=restore_err)
        try:
            loader.stdin.write(_preamble(schemas).encode())
            loader.stdin.flush()
            _relay(reader.stdout, loader.stdin, say)
            if reader.wait() == 0:
                loader.stdin.write(_postamble(row_counts).encode())
        except BrokenPipeError:
            pass  # psql stopped on an error; its output says which
        finally:
            if reader.poll() is None:
                reader.kill()
            reader.wait()
            try:
                loader.stdin.close()
            except BrokenPipeError:
                pass
            loader.wait()
            if reader.stdout:
                reader.stdout.close()
        psql_out.seek(0)
        out = psql_out.read().decode("utf-8", "replace")
        restore_err.seek(0)
        err = restore_err.read().decode("utf-8", "replace")
    if reader.returncode != 0 and loader.returncode == 0:
        raise tools.failure("pg_restore", reader.returncode, err, target, database)
    if loader.returncode != 0 or _COMMITTED not in out:
        raise _psql_failure(out, loader.returncode, target, database)


def _relay(source, sink, say: ProgressFn) -> None:
    """Copy pg_restore's output into psql's input: with splice(2) where there is one (pipe to
    pipe in the kernel, a third of the CPU of read/write), else through a buffer."""
    relayed, report_at = 0, _REPORT_EVERY
    splice = getattr(os, "splice", None)
    while True:
        if splice is not None:
            n = splice(source.fileno(), sink.fileno(), _CHUNK)
        else:
            chunk = source.read(_CHUNK)
            sink.write(chunk)
            n = len(chunk)
        if not n:
            break
        relayed += n
        if relayed >= report_at:
            report_at += _REPORT_EVERY
            say(f"loading: {relayed >> 20} MB of SQL")


def archive_schemas(pg_restore: Program, target: PgTarget, dump: Path) -> list[str]:
    """The schemas the archive creates (`SCHEMA - name` entries); `public` always exists."""
    listing = tools.run([str(pg_restore.path), "--list", str(dump)], target).stdout
    schemas = []
    for line in listing.splitlines():
        parts = line.split()
        if len(parts) >= 6 and parts[3] == "SCHEMA" and parts[4] == "-":
            schemas.append(parts[5])
    return schemas


def _preamble(schemas: list[str]) -> str:
    """BEGIN, then drop what the archive will create: its schemas, and every table, view and
    sequence in `public` (which PostgreSQL creates with the database and archives do not)."""
    drops = "\n".join(f"DROP SCHEMA IF EXISTS {_quote_ident(s)} CASCADE;"
                      for s in schemas if s != "public")
    return f"""BEGIN;
SET LOCAL lock_timeout = '{LOCK_TIMEOUT}';
{drops}
DO $dagpg$
DECLARE r record;
BEGIN
  FOR r IN SELECT c.relname, c.relkind FROM pg_catalog.pg_class c
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
  LOOP
    EXECUTE format('DROP %s IF EXISTS public.%I CASCADE',
      CASE r.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
        WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END, r.relname);
  END LOOP;
END $dagpg$;
"""  # noqa: S608  (a psql script; names are quoted by _quote_ident)


def _postamble(row_counts: dict[str, int]) -> str:
    """Compare every table's rows with the manifest inside the transaction, then COMMIT."""
    values = ",\n    ".join(
        f"({_quote_literal(schema)}, {_quote_literal(table)}, {int(rows)})"
        for schema, table, rows in ((*mf.split_table(k), v) for k, v in row_counts.items())
    )
    check = "" if not values else f"""
DO $dagpg$
DECLARE r record; found bigint; bad text := '';
BEGIN
  FOR r IN SELECT * FROM (VALUES
    {values}
  ) AS v(s, t, expected) LOOP
    IF to_regclass(format('%I.%I', r.s, r.t)) IS NULL THEN
      bad := bad || format('%s.%s is missing; ', r.s, r.t);
      CONTINUE;
    END IF;
    EXECUTE format('SELECT count(*) FROM %I.%I', r.s, r.t) INTO found;
    IF found <> r.expected THEN
      bad := bad || format('%s.%s has %s rows, the manifest says %s; ', r.s, r.t, found,
                           r.expected);
    END IF;
  END LOOP;
  IF bad <> '' THEN
    RAISE EXCEPTION 'row counts differ from the manifest: %', rtrim(bad, '; ');
  END IF;
END $dagpg$;
"""  # noqa: S608  (names and counts are quoted literals, validated by read_manifest)
    return f"{check}\nCOMMIT;\n\\echo {_COMMITTED}\n"


def _psql_failure(out: str, code: int, target: PgTarget, database: str | None) -> Exception:
    lowered = out.lower()
    if "lock timeout" in lowered:
        return ToolFailedError(
            f"psql failed: tables stayed locked by another session for {LOCK_TIMEOUT} "
            "(is Dagster still running?)")
    if "password authentication failed" in lowered or "connection refused" in lowered:
        return tools.failure("psql", code, out, target, database)
    detail = tools.last_line(out) or f"exit code {code}, no COMMIT"
    return ToolFailedError(f"psql failed: {detail}")


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _quote_literal(value: str) -> str:
    # standard_conforming_strings is on in pg_restore's output: only quotes need doubling.
    return "'" + value.replace("'", "''") + "'"
