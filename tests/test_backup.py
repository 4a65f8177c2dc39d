"""`dagpg backup` and `dagpg backups list|verify`: real Dagster runs, real pg_dump, real files."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from dataclasses import replace
from datetime import UTC, timedelta
from pathlib import Path

import pytest

from dagpg import pg
from dagpg.backup import catalog, lock, tools
from dagpg.backup.manifest import sha256_file
from dagpg.errors import ToolNotFoundError
from dagpg.localdb import free_port
from tests import pgharness
from tests.backup_support import (
    backup,
    backup_names,
    error_line,
    flip_byte,
    materialize,
    modes,
    recorded_argv,
    run_cli,
    wrapper_bindir,
)


def table_counts(target) -> dict[str, int]:
    with pg.connection(target) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM runs")
        runs = cur.fetchone()[0]
        cur.execute("SELECT count(*) FROM event_logs")
        return {"runs": runs, "event_logs": cur.fetchone()[0]}


def test_backup_writes_a_complete_private_verified_folder(dagster_home, tmp_path):
    run_ids = materialize(dagster_home.home, runs=2)
    (dagster_home.home / "workspace.yaml").write_text("load_from: []\n")
    dest = tmp_path / "backups"

    result = backup(dest)

    folder = Path(result["path"])
    assert folder.parent == dest and folder.name == result["name"]
    assert backup_names(dest) == [result["name"]]  # no leftovers beside it
    assert sorted(p.name for p in folder.iterdir()) == [
        "compute_logs.tar.gz", "dagster.dump", "dagster.yaml", "manifest.json", "workspace.yaml"]
    assert set(modes(folder).values()) == {0o600, 0o700}
    assert modes(folder)[folder.name] == 0o700 and stat.S_IMODE(dest.stat().st_mode) == 0o700

    manifest = json.loads((folder / "manifest.json").read_text())
    for name, described in manifest["files"].items():
        assert sha256_file(folder / name) == (described["size"], described["sha256"])
    assert manifest["row_counts"]["runs"] == 2
    assert manifest["row_counts"] == {**manifest["row_counts"], **table_counts(dagster_home.target)}
    assert manifest["server"]["major"] >= 15 and manifest["pg_dump"]["major"] >= 15
    assert manifest["dagster_version"] == __import__("dagster").__version__
    from alembic.script import ScriptDirectory

    from dagpg import schema

    kit_head = ScriptDirectory.from_config(schema.kit_alembic_config()).get_current_head()
    assert manifest["alembic"]["dagpg"] == kit_head and manifest["alembic"]["dagster"]
    assert manifest["compute_logs"]["files"] > 0
    assert manifest["instance"]["database"] == dagster_home.database
    assert "password" not in json.dumps(manifest).lower()
    assert manifest["started_at"] < manifest["finished_at"]

    # The compute logs of both runs are in the archive.
    listing = subprocess.run(["tar", "-tzf", folder / "compute_logs.tar.gz"],
                             capture_output=True, text=True, check=True).stdout
    assert all(f"compute_logs/{run_id}/" in listing for run_id in run_ids)

    latest = catalog.latest_backup(dagster_home.resolve())
    assert latest.name == result["name"] and latest.path == folder and latest.verified
    assert latest.finished_at.tzinfo == UTC

    listed = run_cli("backups", "list", "--dir", str(dest), "--json")
    assert listed.exit_code == 0
    (entry,) = json.loads(listed.stdout)["backups"]
    assert (entry["name"], entry["state"], entry["verified"]) == (result["name"], "ok", "ok")
    text = run_cli("backups", "list", "--dir", str(dest)).stdout
    assert text.splitlines()[0] == f"1 backup in {dest}"


def test_latest_backup_is_none_without_backups_and_newest_after(dagster_home, tmp_path):
    inst = dagster_home.resolve()
    assert catalog.latest_backup(inst) is None
    first = backup(tmp_path / "b")
    second = backup(tmp_path / "b")
    assert second["name"] > first["name"]  # names sort by time, even within one second
    assert catalog.latest_backup(inst).name == second["name"]


def test_pg_dump_gets_the_password_from_its_environment_never_argv(dagster_home, tmp_path,
                                                                   monkeypatch):
    password = os.environ[pgharness.PASSWORD_VAR]
    record = tmp_path / "argv"
    monkeypatch.setenv("DAGPG_PG_BINDIR", str(wrapper_bindir(tmp_path / "bin", record=record)))
    result = backup(tmp_path / "backups")
    verified = run_cli("backups", "verify", result["name"], "--dir", str(tmp_path / "backups"),
                       "--restore-test", "--json")
    assert verified.exit_code == 0, verified.stderr
    restored = run_cli("restore", result["name"], "--dir", str(tmp_path / "backups"), "--yes")
    assert restored.exit_code == 0, restored.stderr

    argv = recorded_argv(record)
    programs = {Path(a).name for a in argv if a.startswith(str(tmp_path / "bin"))}
    assert {"pg_dump", "pg_restore", "psql"} <= programs
    assert any(a.startswith("--snapshot=") for a in argv)  # the real pg_dump call was seen
    assert not [a for a in argv if password in a]
    # ... and every child that connected had it in its environment.
    assert "PGPASSWORD=set" in (tmp_path / "argv.env").read_text()


def test_a_flipped_byte_is_caught_by_verify_and_restore_refuses(dagster_home, tmp_path):
    materialize(dagster_home.home, runs=1)
    dest = tmp_path / "backups"
    name = backup(dest)["name"]
    ok = run_cli("backups", "verify", name, "--dir", str(dest))
    assert ok.exit_code == 0 and ok.stdout.startswith(f"{name}: OK")

    flip_byte(dest / name / "dagster.dump")

    expected = (f"Error: backup {name} failed verification: dagster.dump: SHA-256 differs from "
                "the manifest (the file changed); do not restore it, use another backup "
                "(`dagpg backups list`)")
    bad = run_cli("backups", "verify", name, "--dir", str(dest))
    assert bad.exit_code == 1 and error_line(bad) == expected
    info = catalog.latest_backup(dagster_home.resolve())
    assert info.name == name and not info.verified and info.verify_status == "failed"

    before = table_counts(dagster_home.target)
    refused = run_cli("restore", name, "--dir", str(dest), "--yes")
    assert refused.exit_code == 1 and error_line(refused) == expected
    assert table_counts(dagster_home.target) == before
    assert backup_names(dest) == [name]  # not even a safety backup was needed


def test_unknown_backup_name(dagster_home, tmp_path):
    dest = tmp_path / "backups"
    dest.mkdir()
    for name, args in (("20990101T000000Z", ["restore", "20990101T000000Z", "--yes"]),
                       ("nope", ["backups", "verify", "nope"]),
                       ("latest", ["backups", "verify", "latest"])):
        result = run_cli(*args, "--dir", str(dest))
        assert result.exit_code == 1
        assert error_line(result) == (
            f"Error: no backup named {name!r} in {dest}; run `dagpg backups list` to see the "
            "backups, or give the path of a backup folder")


def test_server_down(dagster_home, tmp_path):
    port = free_port()
    pgharness.write_dagster_home(dagster_home.home, replace(dagster_home.target, port=port))
    dest = tmp_path / "backups"
    result = run_cli("backup", "--dest", str(dest))
    assert result.exit_code == 1
    assert error_line(result) == (
        f"Error: cannot connect to PostgreSQL at 127.0.0.1:{port}/{dagster_home.database}: "
        "connection refused; is the server running? (for the local server: `dagpg db status`)")
    assert backup_names(dest) == []


def test_wrong_password(dagster_home, tmp_path, monkeypatch):
    monkeypatch.setenv(pgharness.PASSWORD_VAR, "not-the-password")
    dest = tmp_path / "backups"
    result = run_cli("backup", "--dest", str(dest))
    assert result.exit_code == 1
    assert error_line(result) == (
        f"Error: PostgreSQL at 127.0.0.1:{dagster_home.target.port}/{dagster_home.database} "
        "rejected the password for user 'postgres'; check DAGSTER_PG_PASSWORD")
    assert "not-the-password" not in result.output + result.stderr
    assert backup_names(dest) == []


def test_a_write_failing_midway_leaves_nothing_that_looks_valid(dagster_home, tmp_path,
                                                                 monkeypatch):
    materialize(dagster_home.home, runs=1)
    monkeypatch.setenv("DAGPG_PG_BINDIR", str(
        wrapper_bindir(tmp_path / "bin", record=tmp_path / "argv", limit_kb=16)))
    dest = tmp_path / "backups"
    result = run_cli("backup", "--dest", str(dest))
    assert result.exit_code == 1
    assert error_line(result) == (
        "Error: pg_dump failed: killed by SIGXFSZ (file size limit exceeded); no backup was "
        f"kept in {dest}; fix the cause and run `dagpg backup` again")
    assert backup_names(dest) == []
    assert catalog.latest_backup(dagster_home.resolve()) is None
    listed = json.loads(run_cli("backups", "list", "--dir", str(dest), "--json").stdout)
    (attempt,) = listed["backups"]
    assert attempt["state"] == "failed" and "SIGXFSZ" in attempt["detail"]


def test_two_backups_never_run_at_once(dagster_home, tmp_path):
    holder = pg.connect(dagster_home.target)
    try:
        lock.acquire(holder, "test")
        result = run_cli("backup", "--dest", str(tmp_path / "backups"))
    finally:
        holder.close()
    assert result.exit_code == 1
    assert error_line(result) == (
        f"Error: another dagpg backup or restore of 127.0.0.1:{dagster_home.target.port}/"
        f"{dagster_home.database} is running (its advisory lock is held); wait for it to "
        "finish and run the command again")
    assert backup_names(tmp_path / "backups") == []


def test_destination_not_writable(dagster_home, tmp_path):
    """As root (who may write anywhere) the command runs with the effective uid of an ordinary
    user, after one backup as root has imported everything it needs."""
    backup(tmp_path / "warm-up")
    base = Path(tempfile.mkdtemp(prefix="dagpg-ro-"))
    try:
        base.chmod(0o755)
        home = pgharness.write_dagster_home(base / "home", dagster_home.target)
        home.chmod(0o755)
        (home / "dagster.yaml").chmod(0o644)
        dest = base / "locked"
        dest.mkdir()
        dest.chmod(0o700 if os.geteuid() == 0 else 0o500)
        with as_ordinary_user():
            result = run_cli("backup", "--dagster-home", str(home), "--dest", str(dest))
        assert result.exit_code == 1, "".join(__import__("traceback").format_exception(*result.exc_info))
        assert error_line(result) == (
            f"Error: cannot write backups to {dest}: Permission denied; choose a writable "
            "folder with --dest or dagpg.backup.directory in config/config.yml")
        assert backup_names(dest) == []
    finally:
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def as_ordinary_user():
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(pwd.getpwnam("nobody").pw_uid)
    try:
        yield
    finally:
        os.seteuid(0)


def test_destination_is_a_file(dagster_home, tmp_path):
    dest = tmp_path / "a-file"
    dest.write_text("not a folder")
    result = run_cli("backup", "--dest", str(dest))
    assert result.exit_code == 1
    assert error_line(result) == (
        f"Error: cannot write backups to {dest}: not a folder; choose a writable folder with "
        "--dest or dagpg.backup.directory in config/config.yml")


def test_backup_directory_comes_from_config(dagster_home, tmp_path):
    config = dagster_home.home.parent / "config" / "config.yml"
    config.parent.mkdir()
    config.write_text("dagpg:\n  backup:\n    directory: nightly/backups\n")
    result = run_cli("backup", "--json")
    assert result.exit_code == 0, result.stderr
    assert Path(json.loads(result.stdout)["path"]).parent == tmp_path / "nightly" / "backups"


def test_backup_human_output_and_progress(dagster_home, tmp_path):
    result = run_cli("backup", "--dest", str(tmp_path / "b"))
    assert result.exit_code == 0
    assert result.stdout.splitlines()[0].startswith("backup ")
    assert "… dumping 127.0.0.1:" in result.stderr
    silent = run_cli("backup", "--dest", str(tmp_path / "b"), "--silent")
    assert silent.exit_code == 0 and silent.stderr == ""


def test_catalogued_times_are_utc(dagster_home, tmp_path):
    result = backup(tmp_path / "b")
    info = catalog.latest_backup(dagster_home.resolve())
    manifest = json.loads((Path(result["path"]) / "manifest.json").read_text())
    assert info.finished_at.utcoffset() == timedelta(0)
    assert info.finished_at.isoformat(timespec="milliseconds").replace("+00:00", "Z") == (
        manifest["finished_at"])


def test_if_older_than_skips_while_a_recent_backup_exists(dagster_home, tmp_path):
    dest = tmp_path / "backups"
    first = run_cli("backup", "--dest", str(dest), "--if-older-than", "20", "--json")
    assert first.exit_code == 0 and not json.loads(first.stdout).get("skipped")
    name = json.loads(first.stdout)["name"]
    again = run_cli("backup", "--dest", str(dest), "--if-older-than", "20")
    assert again.exit_code == 0
    assert again.stdout.startswith(f"skipped: backup {name} finished 0.0 h ago, less than 20 h")
    assert backup_names(dest) == [name]
    holder = pg.connect(dagster_home.target)
    try:
        lock.acquire(holder, "test")
        busy = run_cli("backup", "--dest", str(dest), "--if-older-than", "0", "--json")
    finally:
        holder.close()
    assert json.loads(busy.stdout) == {
        "skipped": True, "reason": "another backup of this instance is running now"}
    due = run_cli("backup", "--dest", str(dest), "--if-older-than", "0", "--json")
    assert due.exit_code == 0 and json.loads(due.stdout)["name"] != name


def test_an_older_pg_dump_than_the_server_is_refused():
    """What a server newer than every installed pg_dump gets (e.g. pg_dump 15, server 16)."""
    with pytest.raises(ToolNotFoundError) as err:
        tools.program("pg_dump", 99)
    assert str(err.value).startswith("pg_dump ")
    assert str(err.value).endswith(
        "is older than the server (PostgreSQL 99); install the PostgreSQL 99 (or newer) client "
        "programs and set DAGPG_PG_BINDIR to their bin folder")
    assert err.value.exit_code == 2


def test_backup_works_without_the_kit_schema(dagster_home, tmp_path):
    with pg.connection(dagster_home.target) as conn, conn.cursor() as cur:
        cur.execute("DROP SCHEMA dagpg CASCADE")
    result = backup(tmp_path / "b")
    assert result["catalogued"] is False
    assert catalog.latest_backup(dagster_home.resolve()) is None
    listed = run_cli("backups", "list", "--dir", str(tmp_path / "b"), "--json")
    assert [b["name"] for b in json.loads(listed.stdout)["backups"]] == [result["name"]]


def test_restore_test_needs_a_role_that_may_create_databases(dagster_home, tmp_path):
    """Like the `dagster` role `dagpg db up` creates: LOGIN, no CREATEDB."""
    dest = tmp_path / "backups"
    name = backup(dest)["name"]
    role = f"nocreatedb_{dagster_home.database}"
    password = os.environ[pgharness.PASSWORD_VAR]
    with pg.connection(dagster_home.server.admin, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(f'CREATE ROLE "{role}" LOGIN PASSWORD %s', (password,))
    try:
        home = pgharness.write_dagster_home(tmp_path / "home2",
                                            replace(dagster_home.target, user=role))
        result = run_cli("backups", "verify", name, "--dir", str(dest), "--restore-test",
                         "--dagster-home", str(home))
        assert result.exit_code == 1
        assert error_line(result) == (
            f"Error: role '{role}' may not create databases, which --restore-test needs for "
            f"its scratch database; grant it (ALTER ROLE {role} CREATEDB) or verify without "
            "--restore-test")
        plain = run_cli("backups", "verify", name, "--dir", str(dest), "--dagster-home", str(home))
        assert plain.exit_code == 0, plain.stderr
    finally:
        with pg.connection(dagster_home.server.admin, autocommit=True) as conn:
            with conn.cursor() as cur:
                cur.execute(f'DROP OWNED BY "{role}"')
                cur.execute(f'DROP ROLE "{role}"')


def test_a_killed_backup_takes_pg_dump_with_it_and_its_dump_was_private(dagster_home, tmp_path):
    """Issue 13, item 5: pg_dump is held on a table lock (its dump file already open), the
    backup is SIGKILLed: pg_dump dies with it, and the partial dump was 0600 from its first
    byte. The next backup succeeds."""
    from tests import faults, processes
    from tests.processes import BIN

    materialize(dagster_home.home, runs=1)
    dest = tmp_path / "backups"
    with pg.connection(dagster_home.target) as conn, conn.cursor() as cur:
        cur.execute("LOCK TABLE runs IN ACCESS EXCLUSIVE MODE")
        proc = subprocess.Popen([str(BIN / "dagpg"), "backup", "--dest", str(dest), "--silent"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            processes.wait_for(lambda: faults.waiting_sessions(dagster_home.target, "LOCK TABLE"),
                               timeout=120, what="pg_dump to wait for its lock", proc=proc)
            (pg_dump,) = [p for p in faults.children(proc.pid)
                          if Path(f"/proc/{p}/exe").resolve().name == "pg_dump"]
            (dump,) = dest.glob(".partial-*/dagster.dump")
            assert stat.S_IMODE(dump.stat().st_mode) == 0o600
            proc.kill()  # dagpg only, not its process group
            proc.wait(30)
            processes.wait_for(lambda: not faults.alive(pg_dump), timeout=10,
                               what="pg_dump to die with the killed backup")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    backup(dest)
