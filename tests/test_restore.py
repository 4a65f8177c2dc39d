"""`dagpg restore`: round trips through real Dagster runs, a real disaster, a live daemon, and
restores that fail (which must leave the instance as it was)."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import dagster as dg
from dagster._daemon.types import DaemonHeartbeat

from dagpg import pg
from dagpg.backup import catalog
from dagpg.backup.manifest import sha256_file
from tests.backup_support import (
    backup,
    backup_names,
    dagster_view,
    error_line,
    flip_byte,
    materialize,
    run_cli,
    tree_files,
)


def restore(name: str, dest: Path, *extra: str) -> dict:
    result = run_cli("restore", name, "--dir", str(dest), "--yes", "--json", *extra)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_round_trip_into_an_empty_database_after_a_disaster(dagster_home, tmp_path):
    """Materialize runs, back up, lose the database and the compute logs, restore: Dagster's
    APIs show the same runs, events, asset records and checks, and the instance keeps working."""
    materialize(dagster_home.home, runs=2)
    before = dagster_view(dagster_home.home)
    assert len(before["runs"]) == 2 and len(before["assets"]) == 2 and before["checks"]
    logs_dir = dagster_home.home / "storage"
    logs_before = tree_files(logs_dir)
    dest = tmp_path / "backups"
    name = backup(dest)["name"]

    # The disaster: the database is dropped and re-created empty, the compute logs are gone.
    dagster_home.server.drop_database(dagster_home.database)
    dagster_home.server.create_database(dagster_home.database)
    shutil.rmtree(logs_dir)

    report = restore(name, dest)

    assert report["safety_backup"] is None  # there was nothing to save
    assert report["rows"] > 0 and report["notes"] == []
    assert dagster_view(dagster_home.home) == before
    assert tree_files(logs_dir) == logs_before
    # The instance keeps working: a new run gets new storage ids (sequences were restored).
    materialize(dagster_home.home, runs=1)
    after = dagster_view(dagster_home.home)
    assert len(after["runs"]) == 3
    old_max = max(sid for events in before["events"].values() for sid, _ in events)
    new_run = (set(after["events"]) - set(before["events"])).pop()
    assert min(sid for sid, _ in after["events"][new_run]) > old_max
    # The catalog knows the backup again (the empty database had none).
    assert catalog.latest_backup(dagster_home.resolve()).name == name


def test_restore_over_an_existing_instance_takes_a_safety_backup(dagster_home, tmp_path):
    materialize(dagster_home.home, runs=1)
    before = dagster_view(dagster_home.home)
    dest = tmp_path / "backups"
    name = backup(dest)["name"]
    verified = run_cli("backups", "verify", name, "--dir", str(dest), "--restore-test")
    assert verified.exit_code == 0, verified.stderr
    materialize(dagster_home.home, runs=2)  # history the restore will roll back
    later = dagster_view(dagster_home.home)

    report = restore(name, dest)

    safety = report["safety_backup"]
    assert safety.endswith("-pre-restore") and backup_names(dest) == sorted([name, safety])
    assert dagster_view(dagster_home.home) == before
    manifest = json.loads((dest / safety / "manifest.json").read_text())
    assert manifest["row_counts"]["runs"] == len(later["runs"]) == 3
    assert manifest["kind"] == "pre-restore"
    # What the catalog knew before the restore (the restore test) survives it.
    rows = {b.name: b for b in catalog.all_backups(dagster_home.resolve())}
    assert rows[name].restore_tested_at is not None and rows[safety].verified
    # Restoring the safety backup brings the later history back.
    restore(safety, dest)
    assert dagster_view(dagster_home.home) == later


def test_restore_refuses_while_a_daemon_heartbeat_is_fresh(dagster_home, tmp_path):
    materialize(dagster_home.home, runs=1)
    dest = tmp_path / "backups"
    name = backup(dest)["name"]
    instance = dg.DagsterInstance.from_config(str(dagster_home.home))
    try:
        instance.add_daemon_heartbeat(DaemonHeartbeat(time.time(), "SCHEDULER", "d1", []))
    finally:
        instance.dispose()
    materialize(dagster_home.home, runs=1)
    runs_now = dagster_view(dagster_home.home)["runs"]

    refused = run_cli("restore", name, "--dir", str(dest), "--yes")

    assert refused.exit_code == 1
    line = error_line(refused)
    assert line.startswith("Error: the Dagster daemon is running (SCHEDULER heartbeat ")
    assert re.search(
        r"s ago, newer than 120s\); stop the services \(DagsterDaemon, DagsterWebserver\) and "
        r"run the restore again, or, if they are already stopped, pass --force \(or wait "
        r"\d+s: a stopped daemon's heartbeats turn stale\)$", line), line
    assert dagster_view(dagster_home.home)["runs"] == runs_now
    assert backup_names(dest) == [name]  # no safety backup either

    forced = restore(name, dest, "--force")
    assert forced["safety_backup"] and len(dagster_view(dagster_home.home)["runs"]) == 1


def test_a_failing_restore_rolls_back_and_says_how_to_recover(dagster_home, tmp_path):
    """A dump damaged in a way checksums cannot see (its manifest was rewritten to match):
    pg_restore fails midway, the transaction rolls back, the instance is as it was."""
    materialize(dagster_home.home, runs=2)
    dest = tmp_path / "backups"
    name = backup(dest)["name"]
    materialize(dagster_home.home, runs=1)
    before = dagster_view(dagster_home.home)
    logs_before = tree_files(dagster_home.home / "storage")
    dump = dest / name / "dagster.dump"
    flip_byte(dump, offset=dump.stat().st_size - 64)  # inside the last table's data
    manifest_path = dest / name / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    size, digest = sha256_file(dump)
    manifest["files"]["dagster.dump"] = {"size": size, "sha256": digest}
    manifest_path.write_text(json.dumps(manifest))

    failed = run_cli("restore", name, "--dir", str(dest), "--yes")

    assert failed.exit_code == 1
    line = error_line(failed)
    safety = next(n for n in backup_names(dest) if n.endswith("-pre-restore"))
    assert line.startswith(f"Error: restoring {name} failed and was rolled back, so the "
                           "database is as it was: ")
    assert line.endswith(f"; the safety backup {safety} holds it too; fix the cause and run "
                         f"`dagpg restore {name}` again")
    assert dagster_view(dagster_home.home) == before
    assert tree_files(dagster_home.home / "storage") == logs_before

    tested = run_cli("backups", "verify", name, "--dir", str(dest), "--restore-test")
    assert tested.exit_code == 1
    assert error_line(tested).startswith(
        f"Error: backup {name} failed verification: the test restore failed: ")
    with pg.connection(dagster_home.target) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_database WHERE datname LIKE 'dagpg_verify_%'")
        assert cur.fetchone()[0] == 0  # the scratch database was dropped


def test_row_counts_are_checked_inside_the_restore_transaction(dagster_home, tmp_path):
    materialize(dagster_home.home, runs=1)
    dest = tmp_path / "backups"
    name = backup(dest)["name"]
    before = dagster_view(dagster_home.home)
    manifest_path = dest / name / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["row_counts"]["runs"] += 1
    manifest_path.write_text(json.dumps(manifest))

    failed = run_cli("restore", name, "--dir", str(dest), "--yes")

    assert failed.exit_code == 1
    assert ("psql failed: row counts differ from the manifest: public.runs has 1 rows, the "
            "manifest says 2;") in error_line(failed)
    assert dagster_view(dagster_home.home) == before


def test_a_backup_from_a_newer_dagster_is_refused(dagster_home, tmp_path):
    dest = tmp_path / "backups"
    name = backup(dest)["name"]
    manifest_path = dest / name / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["alembic"]["dagster"] = "ffffffffffff"
    manifest["dagster_version"] = "9.9.9"
    manifest_path.write_text(json.dumps(manifest))
    refused = run_cli("restore", name, "--dir", str(dest), "--yes")
    assert refused.exit_code == 1
    assert error_line(refused) == (
        f"Error: backup {name} was taken with Dagster 9.9.9, whose schema revision ffffffffffff "
        "this Dagster does not know; install Dagster 9.9.9 to restore it")


def test_restore_by_path_and_human_output(dagster_home, tmp_path):
    dest = tmp_path / "elsewhere"
    name = backup(dest)["name"]
    result = run_cli("restore", str(dest / name), "--yes")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[0] == f"restored       {name}"
    assert "… restoring the database from" in result.stderr


def test_restore_asks_first(dagster_home, tmp_path):
    dest = tmp_path / "backups"
    name = backup(dest)["name"]
    result = run_cli("restore", name, "--dir", str(dest))  # no --yes, no answer
    assert result.exit_code == 1
    assert "Aborted!" in result.stderr


def test_a_restore_killed_while_swapping_logs_leaves_nothing_behind(dagster_home, tmp_path):
    """Issue 13, item 6: a restore SIGKILLed while it unpacks the compute logs beside the live
    folder leaves `.storage.restoring-*`; the next restore finishes and removes it."""
    import subprocess

    from tests import faults
    from tests.processes import BIN

    materialize(dagster_home.home, runs=1)
    logs = dagster_home.home / "storage"
    many = logs / "many"  # enough files that unpacking them takes a while
    many.mkdir(parents=True)
    for i in range(3000):
        (many / f"{i}.err").write_text(f"line {i}\n")
    name = backup(tmp_path / "backups")["name"]
    shutil.rmtree(logs)  # a disaster: nothing to take a safety backup of, so it goes quicker
    with pg.connection(dagster_home.target) as conn, conn.cursor() as cur:
        cur.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public; DROP SCHEMA dagpg CASCADE")
    proc = subprocess.Popen([str(BIN / "dagpg"), "restore", name, "--dir",
                             str(tmp_path / "backups"), "--yes", "--silent"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while not list(logs.parent.glob(".storage.restoring-*")):
        assert proc.poll() is None and time.monotonic() < deadline, "never saw the unpacking"
        time.sleep(0.002)
    faults.sigkill(proc.pid)
    proc.wait(30)
    assert list(logs.parent.glob(".storage.restoring-*")), "killed too late: nothing to test"

    restore(name, tmp_path / "backups")
    assert not list(logs.parent.glob(".storage.restoring-*"))
    assert len(list((logs / "many").iterdir())) == 3000
