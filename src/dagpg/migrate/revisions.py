"""Schema revisions of the source's files against the installed Dagster, and upgrade-on-a-copy.

Every SQLite file carries its own alembic_version. A source behind the installed Dagster's head
is copied into the scratch folder and upgraded there by Dagster itself; the original is never
touched. A revision the installed Dagster does not know means the source is newer: refuse.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import shutil
import sqlite3
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dagpg.dbtables import has_table
from dagpg.migrate.errors import SourceTooNewError
from dagpg.migrate.source import SourceFiles, SourceLayout, sqlite_error

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Revisions:
    head: str
    found: dict[str, int]  # revision (or "unstamped") -> number of files

    @property
    def at_head(self) -> bool:
        return set(self.found) <= {self.head}

    def as_dict(self) -> dict:
        return {"dagster_head": self.head, "source": dict(self.found), "at_head": self.at_head}


@functools.cache
def _script():
    from alembic.script import ScriptDirectory
    from dagster._core.storage.runs.sqlite import sqlite_run_storage
    from dagster._core.storage.sql import get_alembic_config

    return ScriptDirectory.from_config(get_alembic_config(sqlite_run_storage.__file__))


def dagster_head() -> str:
    return _script().get_current_head()


def known_revisions() -> set[str]:
    return {rev.revision for rev in _script().walk_revisions()}


def file_revision(conn: sqlite3.Connection) -> str | None:
    if not has_table(conn, "alembic_version"):
        return None
    row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    return row[0] if row else None


def check(files: SourceFiles, tick: Callable[[], None] | None = None) -> Revisions:
    """The revisions of runs.db, index.db and schedules.db (the shards' are read by the event
    plan, which opens each shard anyway: see `add`)."""
    layout = files.layout
    found = Revisions(head=dagster_head(), found={})
    for path in (layout.runs_db, layout.index_db, layout.schedules_db):
        conn = files.connect(path, required=path != layout.schedules_db)
        if conn is None:
            continue
        try:
            revision = file_revision(conn)
        except sqlite3.DatabaseError as exc:
            raise sqlite_error(path, exc) from None
        finally:
            conn.close()
        found = add(found, {revision or "unstamped": (1, str(path))})
        if tick:
            tick()
    return found


def add(found: Revisions, more: dict[str, tuple[int, str]]) -> Revisions:
    """`found` plus {revision: (files, one of their paths)}; a revision the installed Dagster
    does not know means a newer source: SourceTooNewError naming that file."""
    from dagster.version import __version__

    known = known_revisions()
    counts: Counter[str] = Counter(found.found)
    for revision, (count, path) in more.items():
        if revision != "unstamped" and revision not in known:
            raise SourceTooNewError(path, revision, __version__, found.head)
        counts[revision] += count
    return Revisions(head=found.head, found=dict(counts))


def upgrade_copy(files: SourceFiles, dest: Path) -> SourceLayout:
    """Copy the instance's files into `dest` and let Dagster upgrade the copy to its head."""
    from dagster import DagsterInstance
    from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
    from dagster._core.storage.sql import get_alembic_config, run_alembic_upgrade

    layout = files.layout
    base = dest / "base"
    copied = SourceLayout(given=layout.given, runs_db=base / "history" / "runs.db",
                          shards_dir=base / "history" / "runs",
                          schedules_db=base / "schedules" / "schedules.db",
                          yaml_path=layout.yaml_path, base_dir=base)
    copied.shards_dir.mkdir(parents=True)
    copied.schedules_db.parent.mkdir(parents=True)
    pairs = [(layout.runs_db, copied.runs_db), (layout.schedules_db, copied.schedules_db),
             (layout.index_db, copied.index_db)]
    pairs += [(layout.shard_path(r), copied.shard_path(r)) for r in layout.shard_ids()]
    for src, dst in pairs:
        for suffix in ("", "-wal"):
            if Path(f"{src}{suffix}").exists():
                shutil.copyfile(f"{src}{suffix}", f"{dst}{suffix}")
    (dest / "dagster.yaml").write_text(
        f"storage:\n  sqlite:\n    base_dir: {base}\ntelemetry:\n  enabled: false\n",
        encoding="utf-8")
    log.info("upgrading a copy of the source in %s", base)
    with DagsterInstance.from_config(str(dest)) as instance, _dagster_output_to_log():
        instance.upgrade()  # no print_fn: with one, Dagster draws more tqdm bars
        storage = instance.event_log_storage
        if isinstance(storage, SqliteEventLogStorage) and copied.shard_path("").exists():
            # Dagster's upgrade globs *.db and so never sees the hidden shard of run_id ''.
            with storage.run_connection("") as conn:
                run_alembic_upgrade(get_alembic_config(_event_log_file()), conn, "")
    return copied


@contextlib.contextmanager
def _dagster_output_to_log():
    """SqliteEventLogStorage.upgrade() prints to stdout ("Updating event log storage for N runs
    on disk...", which would come before `--json`'s document) and draws a tqdm bar over the
    run shards on stderr, print_fn or not: both go to the log instead of the kit's output."""
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            yield
    finally:
        for text in (out.getvalue(), err.getvalue()):
            if text.strip():
                log.info("Dagster, upgrading the copy: %s", text.strip().replace("\r", "\n"))


def _event_log_file() -> str:
    from dagster._core.storage.event_log.sqlite import sqlite_event_log

    return sqlite_event_log.__file__
