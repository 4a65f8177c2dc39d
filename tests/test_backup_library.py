"""The backup library's own decisions, as the Dagster job, the OS task and the keeper call them
(the CLI only renders them): where the backups folder is, whether a backup is due, whether the
database is asked; and a restore that refuses a compute logs archive built to escape its folder.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from dagpg import pg
from dagpg.backup import (
    BackupSkipped,
    backup_if_due,
    create_backup,
    list_backups,
    prune_backups,
    verify_backup,
)
from dagpg.backup import manifest as mf
from dagpg.backup.errors import BackupNotFoundError
from dagpg.backup.files import extract_logs
from dagpg.dbtables import has_table
from dagpg.errors import ConfigurationError
from dagpg.instance import resolve_instance
from dagpg.settings import KitSettings
from tests import pgharness
from tests.backup_support import backup, error_line, run_cli, tree_files


def settings_with(directory: Path) -> KitSettings:
    return KitSettings.model_validate({"backup": {"directory": str(directory)}})


def test_every_verb_finds_the_backups_folder_in_the_settings(dagster_home, tmp_path):
    instance = dagster_home.resolve()
    configured = tmp_path / "configured"
    settings = settings_with(configured)

    result = create_backup(instance, settings)
    assert result.path == configured / result.name
    assert verify_backup(instance, settings, "latest").name == result.name
    assert [b.name for b in list_backups(instance, settings).backups] == [result.name]
    assert prune_backups(instance, settings, dry_run=True).directory == configured
    # `directory=` wins over the settings, the same way for every verb.
    elsewhere = tmp_path / "elsewhere"
    with pytest.raises(BackupNotFoundError) as err:
        verify_backup(instance, settings, "latest", directory=elsewhere)
    assert str(err.value).startswith(f"no backup named 'latest' in {elsewhere}; ")
    assert list_backups(instance, settings, directory=elsewhere).backups == []

    # The nightly fallback: nothing while the newest backup is younger than the limit.
    skipped = backup_if_due(instance, settings, older_than_h=20)
    assert skipped == BackupSkipped(
        f"backup {result.name} finished 0.0 h ago, less than 20 h")
    assert sorted(p.name for p in configured.iterdir()) == [result.name]


@pytest.mark.parametrize("hours", [-1, float("nan")])
def test_backup_if_due_refuses_a_negative_age_before_any_work(hours, tmp_path):
    instance = None  # never reached: the limit is checked first
    with pytest.raises(ConfigurationError) as err:
        backup_if_due(instance, settings_with(tmp_path), older_than_h=hours)
    assert str(err.value) == (f"the backup age limit must be 0 hours or more, not {hours:g}; "
                              "give a number of hours (--if-older-than)")


def test_list_backups_does_not_ask_the_database_without_a_password(dagster_home, tmp_path,
                                                                   monkeypatch):
    backup(tmp_path / "b")
    monkeypatch.delenv(pgharness.PASSWORD_VAR)
    instance = resolve_instance(dagster_home.home, require_password=False)
    assert instance.target.password_missing
    listed = list_backups(instance, settings_with(tmp_path / "b"))
    # Asking would have failed on the password: the note would then say "catalog unavailable".
    assert listed.catalog_note == ("the database was not consulted (no password set): "
                                   "verification results are not shown")
    assert [(b.state, b.verified) for b in listed.backups] == [("ok", "ok")]  # its manifest


# -- a compute logs archive built to write outside its folder --------------------------------

def _member(name: str, kind: bytes = tarfile.REGTYPE, target: str = "") -> tuple:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    data = b"owned\n" if kind == tarfile.REGTYPE else b""
    info.size = len(data)
    return info, data


MALICIOUS = {
    "parent": [_member("compute_logs/run/../../../escaped.txt")],
    "absolute": [_member("/tmp/dagpg-escaped.txt")],
    "empty part": [_member("compute_logs//etc/escaped.txt")],
    "symlink": [_member("compute_logs/run", tarfile.SYMTYPE, "/etc"),
                _member("compute_logs/run/escaped.txt")],
    "hard link": [_member("compute_logs/passwd", tarfile.LNKTYPE, "/etc/passwd")],
    "device": [_member("compute_logs/null", tarfile.CHRTYPE)],
}


def write_archive(path: Path, members: list[tuple]) -> None:
    with tarfile.open(path, mode="w:gz") as tar:
        for info, data in [_member("compute_logs/run/ok.out"), *members]:  # harmless first
            tar.addfile(info, io.BytesIO(data) if data else None)


@pytest.mark.parametrize("kind", sorted(MALICIOUS))
def test_extract_logs_refuses_every_unsafe_entry(kind, tmp_path):
    archive = tmp_path / mf.LOGS_FILE
    write_archive(archive, MALICIOUS[kind])
    with pytest.raises(ValueError) as err:
        extract_logs(archive, tmp_path / "logs")
    assert str(err.value) == (f"compute_logs.tar.gz holds an unsafe entry "
                              f"{MALICIOUS[kind][0][0].name!r}")
    assert not (tmp_path / "logs" / "run").exists()  # nothing unpacked, not even the harmless
    assert not (tmp_path / "escaped.txt").exists()


def test_restore_refuses_an_unsafe_logs_archive_before_changing_anything(dagster_home,
                                                                         tmp_path):
    instance = dagster_home.resolve()
    logs = instance.compute_logs_dir
    (logs / "run1").mkdir(parents=True)
    (logs / "run1" / "step.out").write_text("the live instance's log\n")
    dest = tmp_path / "backups"
    name = backup(dest)["name"]
    with pg.connection(dagster_home.target) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE after_the_backup (x int)")  # a restore would drop it
    live_logs = tree_files(logs)

    # Whoever can write the backup folder can rewrite its manifest too: checksums agree.
    folder = dest / name
    write_archive(folder / mf.LOGS_FILE, MALICIOUS["parent"])
    manifest = json.loads((folder / mf.MANIFEST).read_text())
    manifest["files"].update(mf.describe_files(folder, [mf.LOGS_FILE]))
    (folder / mf.MANIFEST).unlink()
    mf.write_manifest(folder, manifest)
    assert mf.check_files(folder, mf.read_manifest(folder)) == []

    expected = (f"Error: backup {name} failed verification: compute_logs.tar.gz holds an unsafe "
                "entry 'compute_logs/run/../../../escaped.txt'; do not restore it, use another "
                "backup (`dagpg backups list`)")
    refused = run_cli("restore", name, "--dir", str(dest), "--yes")
    assert refused.exit_code == 1 and error_line(refused) == expected
    with pg.connection(dagster_home.target) as conn:
        assert has_table(conn, "public.after_the_backup")  # the database was not touched
    assert tree_files(logs) == live_logs
    assert sorted(p.name for p in dest.iterdir()) == [name]  # no safety backup was needed
    assert not any(p.name == "escaped.txt" for p in tmp_path.rglob("*"))

    verified = run_cli("backups", "verify", name, "--dir", str(dest))
    assert verified.exit_code == 1 and error_line(verified) == expected
