"""Bad input to `dagpg migrate-from-sqlite`: one line saying what is wrong and what to do, a
non-zero exit code, nothing written to the target, and the source left exactly as it was."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from dagpg import pg
from dagpg.cli import cli
from dagpg.localdb import free_port
from tests import pgharness, sqlite_fixtures

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def sqlite_home(tmp_path_factory):
    return sqlite_fixtures.shared_home(tmp_path_factory)


@pytest.fixture
def spoilable(sqlite_home, tmp_path):
    return sqlite_fixtures.copy_home(sqlite_home, tmp_path / "source")


def migrate_cli(source, *extra: str, env: dict | None = None):
    return CliRunner().invoke(cli, ["migrate-from-sqlite", str(source), "--yes", "--force",
                                    *extra], env=env)


def assert_error(result, code: int, line: str) -> None:
    import traceback

    why = result.output + "".join(traceback.format_exception(*result.exc_info)) \
        if result.exc_info else result.output
    assert result.exit_code == code, why
    assert result.output.splitlines()[-1:] == [f"Error: {line}"], why


def assert_target_untouched(target) -> None:
    with pg.connection(target) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM dagpg.migration_runs")
        assert cur.fetchone()[0] == 0
        cur.execute("SELECT (SELECT count(*) FROM runs) + (SELECT count(*) FROM event_logs)")
        assert cur.fetchone()[0] == 0


def a_run_with_index_events(copy) -> tuple[str, int]:
    (row,) = sqlite_fixtures.sqlite_rows(
        copy.base_dir / "history" / "runs" / "index.db",
        "SELECT run_id, count(*) FROM event_logs WHERE run_id <> '' GROUP BY run_id "
        "ORDER BY run_id LIMIT 1")
    return row


def test_wrong_path(dagster_home, tmp_path):
    missing = tmp_path / "nowhere"
    assert_error(migrate_cli(missing), 2,
                 f"{missing}: no Dagster SQLite storage found ({missing} does not exist); pass "
                 "the old DAGSTER_HOME (holding dagster.yaml) or its SQLite base_dir")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_error(migrate_cli(empty), 2,
                 f"{empty}: no Dagster SQLite storage found ({empty}/history/runs.db does not "
                 "exist); pass the old DAGSTER_HOME (holding dagster.yaml) or its SQLite base_dir")
    assert_target_untouched(dagster_home.target)


def test_a_postgres_home_is_not_a_source(dagster_home):
    assert_error(migrate_cli(dagster_home.home), 2,
                 f"{dagster_home.home}/dagster.yaml: storage is storage.postgres, not SQLite; "
                 "nothing to migrate from there")


def test_missing_shard(spoilable, dagster_home):
    run_id, events = a_run_with_index_events(spoilable)
    shard = spoilable.base_dir / "history" / "runs" / f"{run_id}.db"
    shard.unlink()
    before = sqlite_fixtures.checksums(spoilable.base_dir)
    assert_error(migrate_cli(spoilable.home), 2,
                 f"{shard} is missing, but index.db holds {events} event(s) of run {run_id}; "
                 "restore the file from a backup, then run again")
    assert sqlite_fixtures.checksums(spoilable.base_dir) == before
    assert_target_untouched(dagster_home.target)


def test_corrupt_shard(spoilable, dagster_home):
    run_id, _ = a_run_with_index_events(spoilable)
    shard = spoilable.base_dir / "history" / "runs" / f"{run_id}.db"
    shard.write_bytes(b"this is not a database, it was overwritten by accident\n" * 100)
    before = sqlite_fixtures.checksums(spoilable.base_dir)
    assert_error(migrate_cli(spoilable.home), 2,
                 f"{shard} is not a readable Dagster SQLite database (file is not a database); "
                 "restore it from a backup, then run again")
    assert sqlite_fixtures.checksums(spoilable.base_dir) == before
    assert_target_untouched(dagster_home.target)


def test_truncated_shard(spoilable, dagster_home):
    """Half a file: the header reads fine, the pages do not."""
    run_id, _ = a_run_with_index_events(spoilable)
    shard = spoilable.base_dir / "history" / "runs" / f"{run_id}.db"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    result = migrate_cli(spoilable.home)
    assert result.exit_code == 2, result.output
    line = result.output.splitlines()[-1]
    assert line.startswith(f"Error: {shard} is not a readable Dagster SQLite database (")
    assert line.endswith("); restore it from a backup, then run again")
    assert_target_untouched(dagster_home.target)


def test_source_newer_than_the_installed_dagster(spoilable, dagster_home):
    import dagster

    from dagpg.migrate.revisions import dagster_head

    runs_db = spoilable.base_dir / "history" / "runs.db"
    conn = sqlite3.connect(runs_db)
    conn.execute("UPDATE alembic_version SET version_num = 'f00dfeedbeef'")
    conn.commit()
    conn.close()
    before = sqlite_fixtures.checksums(spoilable.base_dir)
    assert_error(migrate_cli(spoilable.home), 2,
                 f"{runs_db} is at Dagster schema revision f00dfeedbeef, unknown to the installed "
                 f"Dagster {dagster.__version__} (head {dagster_head()}); install the Dagster "
                 "version that wrote it (with its dagster-postgres) and run again")
    assert sqlite_fixtures.checksums(spoilable.base_dir) == before
    assert_target_untouched(dagster_home.target)


def test_target_unreachable(sqlite_home, pg_server, tmp_path):
    port = free_port()
    home = pgharness.write_dagster_home(
        tmp_path / "home", dataclasses.replace(pg_server.target("nowhere"), port=port))
    result = CliRunner().invoke(cli, ["migrate-from-sqlite", str(sqlite_home.home), "--yes",
                                      "--force", "--dagster-home", str(home)],
                                env={"DAGSTER_PG_PASSWORD": "whatever"})
    assert_error(result, 1, f"cannot connect to PostgreSQL at 127.0.0.1:{port}/nowhere: "
                 "connection refused; is the server running? (for the local server: "
                 "`dagpg db status`)")
    assert sqlite_home.unchanged()


def test_wrong_password(sqlite_home, dagster_home):
    result = migrate_cli(sqlite_home.home, env={"DAGSTER_PG_PASSWORD": "not-the-password"})
    assert_error(result, 1, f"PostgreSQL at {dagster_home.target.where} rejected the password "
                 f"for user {dagster_home.target.user!r}; check DAGSTER_PG_PASSWORD")
    assert "not-the-password" not in result.output
    assert sqlite_home.unchanged()


def test_a_killed_child_stops_the_migration_in_one_line_and_a_rerun_finishes(sqlite_home,
                                                                              dagster_home):
    """The child rendering events (`python -m dagpg.migrate.pump`) is SIGKILLed as soon as it
    starts, as the OOM killer would."""
    killed: list[int] = []
    finished = threading.Event()

    def kill_the_child() -> None:
        while not finished.is_set() and not killed:
            for pid in _children_running("dagpg.migrate.pump"):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            finished.wait(0.005)

    killer = threading.Thread(target=kill_the_child, daemon=True)
    killer.start()
    try:
        first = migrate_cli(sqlite_home.home, "--silent")
    finally:
        finished.set()
        killer.join()
    assert killed, "the child was never seen"
    assert_error(first, 1, "the event-rendering process ended early (exit code -9); run the "
                 "command again")
    again = migrate_cli(sqlite_home.home, "--silent", "--json")
    assert again.exit_code == 0, again.output
    report = json.loads(again.stdout)
    assert (report["resumed"], report["verification"]["ok"]) == (True, True)
    sqlite_fixtures.assert_one_migration_copied_every_event_once(dagster_home.target)
    assert sqlite_home.unchanged()


def _children_running(module: str) -> list[int]:
    """This process's children whose command line runs `module`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            argv = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if ppid == os.getpid() and module.encode() in argv:
            found.append(int(stat.parent.name))
    return found


def test_unreadable_file(sqlite_home, dagster_home):
    """chmod 000 on a shard. Root reads anything, so as root the CLI runs as another user."""
    root = Path(tempfile.mkdtemp(prefix="dagpg-unreadable-"))
    try:
        root.chmod(0o755)
        copy = sqlite_fixtures.copy_home(sqlite_home, root / "source")
        home = pgharness.write_dagster_home(root / "target", dagster_home.target)
        for path in [root, *root.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        run_id, _ = a_run_with_index_events(copy)
        shard = copy.base_dir / "history" / "runs" / f"{run_id}.db"
        shard.chmod(0)
        before = sqlite_fixtures.checksums(copy.base_dir)
        code, output = _run_unprivileged(copy.home, home)
        assert code == 2, output
        assert output.splitlines()[-1] == (
            f"Error: cannot read {shard}: permission denied; give the user running dagpg read "
            "access to the whole SQLite folder and run again")
        assert sqlite_fixtures.checksums(copy.base_dir) == before
        assert_target_untouched(dagster_home.target)
    finally:
        subprocess.run(["rm", "-rf", str(root)], check=False)


_AS_OTHER_USER = """
import os, sys, pwd
# The interpreter's own files may be out of the other user's reach: load all that the command
# needs up to reading the source while still root.
import dagster, dagpg.cli, dagpg.migrate.run, sqlite3, tempfile, yaml
import dagster._core.storage.runs.sqlite.sqlite_run_storage
from dagpg.migrate import revisions
revisions.dagster_head(), revisions.known_revisions()
user = pwd.getpwnam(sys.argv[1])
if os.geteuid() == 0:
    os.setgid(user.pw_gid)
    os.setuid(user.pw_uid)
sys.argv = ["dagpg", *sys.argv[2:]]
dagpg.cli.main()
"""


def _run_unprivileged(source: Path, home: Path) -> tuple[int, str]:
    if os.geteuid() != 0:
        result = migrate_cli(source, "--dagster-home", str(home))
        return result.exit_code, result.output
    user = next((u for u in ("postgres", "nobody") if _user_exists(u)), None)
    if user is None:
        pytest.fail("running as root and no unprivileged user (postgres, nobody) to test with")
    proc = subprocess.run(
        [sys.executable, "-c", _AS_OTHER_USER, user, "migrate-from-sqlite", str(source),
         "--dagster-home", str(home), "--yes", "--force", "--silent"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "TMPDIR": "/tmp"}, cwd="/tmp")
    return proc.returncode, proc.stdout + proc.stderr


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def test_corrupt_pages_are_refused_before_anything_is_written(spoilable, empty_dagster_home,
                                                             tmp_path):
    """Issue 13, item 3: a page of one run's shard overwritten, one that building the event
    plan never reads (so only the copy would have met it). Every page is read before writing:
    one line, exit 2, not even the schema created; restored, the same command runs clean."""
    shard, original = _damage_a_page_the_plan_never_reads(spoilable, tmp_path)
    before = sqlite_fixtures.checksums(spoilable.base_dir)
    result = migrate_cli(spoilable.home)
    assert result.exit_code == 2, result.output
    line = result.output.splitlines()[-1]
    assert line.startswith(f"Error: {shard} is not a readable Dagster SQLite database (")
    assert line.endswith("); restore it from a backup, then run again")
    assert sqlite_fixtures.checksums(spoilable.base_dir) == before
    with pg.connection(empty_dagster_home.target) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_tables WHERE schemaname IN ('public', 'dagpg')")
        assert cur.fetchone()[0] == 0

    shard.write_bytes(original)  # restored from a backup
    again = migrate_cli(spoilable.home, "--silent")
    assert again.exit_code == 0, again.output


def _damage_a_page_the_plan_never_reads(copy, tmp_path) -> tuple[Path, bytes]:
    """Overwrite, in the first shard where there is one, a page of event_logs rows that the
    event plan (which reads only the rows index.db mirrors) does not read; return the shard
    and its original bytes."""
    from dagpg.migrate.errors import CorruptSourceError
    from dagpg.migrate.idmap import EventPlan
    from dagpg.migrate.source import SourceFiles, discover

    layout = discover(copy.home)
    for run_id in layout.shard_ids():
        shard = layout.shard_path(run_id)
        original = shard.read_bytes()
        size = int.from_bytes(original[16:18], "big")
        leaves = [p for (p,) in sqlite_fixtures.sqlite_rows(
            shard, "SELECT pageno FROM dbstat WHERE name = 'event_logs' AND pagetype = 'leaf' "
            "ORDER BY pageno")]
        for page in leaves[1:-1]:  # not the first or last: min(id) and max(id) read those
            start = (page - 1) * size
            shard.write_bytes(original[:start] + b"\xa5" * size + original[start + size:])
            scratch = Path(tempfile.mkdtemp(dir=tmp_path))
            plan = EventPlan(scratch / "plan.db")
            try:
                plan.build(SourceFiles(layout, scratch), layout.shard_ids())
                return shard, original
            except CorruptSourceError:
                continue
            finally:
                plan.close()
        shard.write_bytes(original)
    pytest.fail("no page the event plan does not read: nothing to test")
