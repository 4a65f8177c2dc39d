"""`dagpg backups verify`: checksums, pg_restore --list, the logs archive, and on demand a test
restore into a scratch database with every table's row count compared to the manifest.
"""

from __future__ import annotations

import logging
import os
import tarfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2

from dagpg import pg
from dagpg.backup import catalog, files, tools
from dagpg.backup import manifest as mf
from dagpg.backup.errors import BackupCorruptError, BackupError
from dagpg.backup.folders import Folder, backup_directory, locate
from dagpg.errors import DatabaseError
from dagpg.instance import Instance
from dagpg.progress import ProgressFn, reporter
from dagpg.settings import KitSettings

log = logging.getLogger(__name__)



@dataclass
class VerifyReport:
    name: str
    path: Path
    checks: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    restore_tested: bool = False
    tables_compared: int = 0
    duration_s: float = 0.0
    recorded: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path), "ok": self.ok,
                "checks": self.checks, "problems": self.problems,
                "restore_tested": self.restore_tested, "tables_compared": self.tables_compared,
                "duration_s": round(self.duration_s, 3), "recorded": self.recorded}


def verify_backup(
    instance: Instance,
    settings: KitSettings,
    name: str,
    *,
    directory: str | os.PathLike | None = None,
    restore_test: bool = False,
    progress: ProgressFn | None = None,
) -> VerifyReport:
    """Verify backup `name` (in the backups folder, or a folder's path). Raises
    BackupCorruptError when a check fails, after recording the result in the catalog."""
    say = reporter(progress)
    started = time.monotonic()
    folder = locate(name, backup_directory(settings, directory))
    report = VerifyReport(folder.name, folder.path)
    say("checking SHA-256 checksums")
    report.problems += mf.check_files(folder.path, folder.manifest)
    if not report.problems:
        report.checks.append(f"SHA-256 and size of {len(folder.manifest['files'])} files")
        _check_readable(instance, folder, report, say)
    if restore_test and not report.problems:
        _restore_test(instance, folder, report, say)
    report.duration_s = time.monotonic() - started
    report.recorded = _record(instance, report)
    if report.problems:
        more = len(report.problems) - 1
        raise BackupCorruptError(
            folder.name, report.problems[0] + (f" (and {more} more problems)" if more else ""))
    return report


def _check_readable(instance: Instance, folder: Folder, report: VerifyReport, say) -> None:
    say("reading the dump's table of contents (pg_restore --list)")
    dump_major = int(folder.manifest.get("pg_dump", {}).get("major") or 0)
    pg_restore = tools.program("pg_restore", dump_major or 1)
    try:
        tools.run([str(pg_restore.path), "--list", str(folder.path / mf.DUMP_FILE)],
                  instance.target)
        report.checks.append(f"pg_restore --list ({pg_restore.version})")
    except BackupError as exc:
        report.problems.append(f"{mf.DUMP_FILE} cannot be read: {exc}")
    if mf.LOGS_FILE in folder.manifest["files"]:
        try:
            members = files.check_archive(folder.path / mf.LOGS_FILE)
            report.checks.append(f"compute logs archive ({members} entries)")
        except ValueError as exc:  # an entry that would land outside the logs folder
            report.problems.append(str(exc))
        except (OSError, EOFError, tarfile.TarError) as exc:
            report.problems.append(f"{mf.LOGS_FILE} cannot be read: {exc}")


def _restore_test(instance: Instance, folder: Folder, report: VerifyReport, say) -> None:
    """pg_restore straight into a scratch database (one transaction, stop at the first error),
    then every table's row count against the manifest. The scratch database is always dropped."""
    manifest = folder.manifest
    expected = manifest.get("row_counts") or {}
    scratch = f"dagpg_verify_{uuid.uuid4().hex[:12]}"
    with pg.connection(instance.target, autocommit=True) as conn:
        major = conn.server_version // 10000
        dump_major = int(manifest.get("pg_dump", {}).get("major") or 0)
        pg_restore = tools.program("pg_restore", max(major, dump_major))
        pg.create_scratch_database(conn, scratch, error=BackupError, needed_by="--restore-test",
                                   otherwise=" or verify without --restore-test")
        try:
            say(f"test restore into scratch database {scratch}")
            tools.run([str(pg_restore.path), "--no-owner", "--no-acl", "--exit-on-error",
                       "--single-transaction", "--no-password", f"--dbname={scratch}",
                       str(folder.path / mf.DUMP_FILE)], instance.target, database=scratch)
            say("comparing row counts with the manifest")
            with pg.connection(instance.target, database=scratch) as scratch_conn:
                with scratch_conn.cursor() as cur:
                    found = mf.row_counts(cur)
            differ = [f"{table} has {found.get(table, 'no')} rows, the manifest says {rows}"
                      for table, rows in expected.items() if found.get(table) != rows]
            if differ:
                report.problems.append("after the test restore, " + "; ".join(differ))
            else:
                report.restore_tested = True
                report.tables_compared = len(expected)
                report.checks.append(
                    f"test restore: {len(expected)} tables, row counts as in the manifest")
        except BackupError as exc:
            report.problems.append(f"the test restore failed: {exc}")
        finally:
            say(f"dropping scratch database {scratch}")
            pg.drop_database(conn, scratch)


def _record(instance: Instance, report: VerifyReport) -> bool:
    detail = "; ".join(report.problems or report.checks)
    try:
        with pg.connection(instance.target) as conn:
            if not catalog.has_catalog(conn):
                return False
            return catalog.record_verification(conn, report.name, report.ok, detail,
                                               restore_tested=report.restore_tested)
    except (DatabaseError, psycopg2.Error) as exc:
        log.warning("the result of verifying %s was not recorded: %s", report.name, exc)
        return False
