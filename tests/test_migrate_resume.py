"""Kill `dagpg migrate-from-sqlite` (SIGKILL) at several points, run it again each time: the final
state equals that of a migration that was never interrupted, with no duplicates.

The kills land inside Dagster's schema creation (held inside a CREATE TABLE by a lock, see
faults.py), at the start of each phase, between copy units, and during verification with the
second verification process busy; between two attempts a shard is restored from a backup (same
bytes, a new modification time), so the migration starts over. Every child of a killed run dies
with it, and a last run after the end says there is nothing left to do.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from dagpg import pg
from dagpg.migrate import migrate
from dagpg.migrate.run import SCRATCH_PREFIX
from tests import faults, pgharness, processes, sqlite_fixtures
from tests.processes import BIN

pytestmark = pytest.mark.slow

BATCH = 5  # tiny units, so that there are many points to be killed at
SKIP_TABLES = {"alembic_version", "secondary_indexes", "daemon_heartbeats"}


@dataclass(frozen=True)
class Kill:
    """Where an attempt is killed: after `at` progress lines, or at the first line starting
    with `at`, or (`creating`) while Dagster waits to create that table; None: not killed."""

    at: int | str | None = None
    creating: str | None = None
    worker: bool = False          # run through the library with a second verification process
    restore_shard: bool = False   # afterwards, a shard is restored from a backup


KILLS = [
    Kill(creating="concurrency_slots"),   # event storage half created, alembic stamped
    Kill(creating="job_ticks"),           # (after the rebuild) schedule storage half created
    Kill(at="… schema"),
    Kill(at=3),
    Kill(at=12, restore_shard=True),      # the next attempt starts over
    Kill(at=30),
    Kill(at=45),
    Kill(at="… logs"),
    Kill(at="… verify", worker=True),
    Kill(),
]

_LIBRARY_RUN = """
import sys
from dagpg.instance import resolve_instance
from dagpg.migrate import migrate
migrate(resolve_instance(sys.argv[2]), sys.argv[1], force=True, batch_rows=int(sys.argv[3]),
        verify_workers=1,
        progress=lambda p: print(f"… {p.phase}: {p.done}", file=sys.stderr, flush=True))
"""


@pytest.fixture(scope="session")
def sqlite_home(tmp_path_factory):
    return sqlite_fixtures.shared_home(tmp_path_factory)


def digest(target) -> dict[str, str]:
    """Content of every Dagster table (ordered by id) and where each sequence stands."""
    out = {}
    with pg.connection(target) as conn, conn.cursor() as cur:
        cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")
        for (table,) in cur.fetchall():
            if table in SKIP_TABLES:
                continue
            cur.execute(f'SELECT count(*), md5(coalesce(string_agg(t::text, E\'\\n\' '
                        f'ORDER BY t.id), \'\')) FROM "{table}" t')
            count, md5 = cur.fetchone()
            out[table] = f"{count} rows, md5 {md5}"
        cur.execute("SELECT sequencename, last_value FROM pg_sequences "
                    "WHERE schemaname = 'public' ORDER BY 1")
        for name, value in cur.fetchall():
            if not name.startswith(tuple(SKIP_TABLES)):
                out[f"sequence {name}"] = str(value)
    return out


def files_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def attempt(source: Path, home: Path, target, kill: Kill, log: list[str], pids: list[int]
            ) -> int | None:
    """Run the migration; SIGKILL it as `kill` says. Returns its exit code, None if killed."""
    argv = [str(BIN / "dagpg"), "migrate-from-sqlite", str(source), "--dagster-home", str(home),
            "--yes", "--force", "--batch-rows", str(BATCH)]
    if kill.worker:
        argv = [sys.executable, "-c", _LIBRARY_RUN, str(source), str(home), str(BATCH)]
    if kill.creating:
        with faults.creation_blocked(target, kill.creating):
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    start_new_session=True)
            pids.append(proc.pid)
            faults.kill_while_creating(proc, target, kill.creating)
        log.append(f"--- killed while creating {kill.creating} ---")
        return None
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    pids.append(proc.pid)
    lines = 0
    for line in proc.stderr:
        log.append(line.rstrip())
        lines += line.startswith("… ")
        if kill.at is not None and (lines == kill.at if isinstance(kill.at, int)
                                    else line.startswith(kill.at)):
            how = (_kill_with_a_busy_worker(proc, target) if kill.worker
                   else _kill_with_children(proc))
            log += [f"--- killed after {lines} progress lines ---", how]
            return None
    log.append(proc.stdout.read())
    return proc.wait(60)


def _kill_with_children(proc: subprocess.Popen) -> str:
    """SIGKILL the migration (only it: not its process group); its children must follow."""
    helpers = faults.children(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    processes.wait_for(lambda: not any(faults.alive(p) for p in helpers), timeout=10,
                       what=f"the killed migration's children {helpers} to die")
    return f"--- its children {helpers} died with it ---"


def _kill_with_a_busy_worker(proc: subprocess.Popen, target) -> str:
    """Verification has begun: hold event_logs locked, so that the second verification
    process (verify_worker.py) is waiting on it, kill the migration; the worker, stuck in its
    query, must still die at once (not finish, nor write a BrokenPipe traceback)."""
    with pg.connection(target) as conn, conn.cursor() as cur:
        cur.execute("LOCK TABLE event_logs IN ACCESS EXCLUSIVE MODE")
        worker = processes.wait_for(lambda: _worker_waiting(proc.pid, target), timeout=120,
                                    what="the verification process to wait on event_logs",
                                    proc=proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        processes.wait_for(lambda: not faults.alive(worker), timeout=10,
                           what="the verification process to die with the migration")
    return f"--- its verification process {worker} died with it ---"


def _worker_waiting(pid: int, target) -> int | None:
    workers = [p for p in faults.children(pid) if b"verify_worker" in _cmdline(p)]
    with pg.connection(target) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = "
                    "'event_logs'::regclass")
        waiting = cur.fetchone()[0]
    return workers[0] if workers and waiting >= 2 else None


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_killed_at_several_points_ends_like_an_uninterrupted_run(sqlite_home, dagster_home,
                                                                  pg_server, tmp_path):
    migrate(dagster_home.resolve(), sqlite_home.home, force=True, batch_rows=BATCH)
    expected = digest(dagster_home.target)

    source = sqlite_fixtures.copy_home(sqlite_home, tmp_path / "source")
    database = pg_server.create_database()
    try:
        target = pg_server.target(database)
        faults.notice_dead_clients(target)
        home = pgharness.write_dagster_home(tmp_path / "killed_home", target)
        log: list[str] = []
        pids: list[int] = []
        codes = []
        for kill in KILLS:
            codes.append(attempt(source.home, home, target, kill, log, pids))
            if kill.restore_shard:
                _restore_a_shard(source, tmp_path)
        assert codes[:-1] == [None] * (len(KILLS) - 1), "\n".join(log)
        assert codes[-1] == 0, "\n".join(log)
        assert digest(target) == expected
        with pg.connection(target) as conn, conn.cursor() as cur:
            cur.execute("SELECT id, status FROM dagpg.migration_runs ORDER BY id")
            (_, first), (mid, status) = cur.fetchall()
            assert (first, status) == ("abandoned", "done")
            cur.execute("SELECT sum(rows) FROM dagpg.migration_steps WHERE migration_id = %s "
                        "AND step LIKE 'events:%%'", (mid,))
            copied = cur.fetchone()[0]
            cur.execute("SELECT count(*) FROM event_logs")
            assert copied == cur.fetchone()[0]  # every event copied once, across all attempts
        # the compute logs, whole and once
        source_logs = files_digest(source.home / "compute_logs")
        target_logs = files_digest(home / "storage")
        assert target_logs.items() <= source_logs.items() and len(target_logs) > 30
        # the killed attempts' scratch folders were removed by the next attempt
        left = [d for d in Path(tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*")
                if (d / "pid").is_file() and int((d / "pid").read_text()) in pids]
        assert left == []
        # the kills landed in different phases
        phases = {log[i - 1].split()[1].rstrip(":") for i, line in enumerate(log)
                  if line.startswith("--- killed after")}
        assert {"schema", "tables", "events", "logs", "verify"} <= phases, phases
        # a kill that lands after the final commit: the retry says there is nothing to do
        again = subprocess.run([str(BIN / "dagpg"), "migrate-from-sqlite", str(source.home),
                                "--dagster-home", str(home), "--yes", "--force", "--silent"],
                               capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr
        assert again.stdout.startswith(f"Already migrated: {source.home} -> ")
    finally:
        pg_server.drop_database(database)
    assert source.unchanged()  # a restored shard holds what it held
    assert sqlite_home.unchanged()


def _restore_a_shard(source, tmp_path: Path) -> None:
    """As an operator restoring a file from a backup: the same bytes, written anew."""
    shard = sorted((source.base_dir / "history" / "runs").glob("*-*.db"))[0]
    backup = tmp_path / "shard-backup.db"
    shutil.copyfile(shard, backup)
    time.sleep(0.01)  # a new modification time, even on a coarse clock
    shutil.copyfile(backup, shard)
