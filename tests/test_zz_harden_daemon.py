"""harden acceptance (not committed): a real dagster-daemon."""
from __future__ import annotations

from dagpg import pg
from tests import processes
from tests.backup_support import backup, run_cli


def test_real_daemon(dagster_home, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    dest = tmp_path / "backups"
    b = backup(dest)
    daemon = processes.start_daemon(dagster_home.home, tmp_path / "logs")

    def beats():
        with pg.connection(dagster_home.target) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM daemon_heartbeats")
            return cur.fetchone()[0]
    try:
        processes.wait_for(beats, timeout=180, what="heartbeats", proc=daemon)
        for args in (["upgrade", "--apply"], ["upgrade", "--rehearse"],
                     ["upgrade", "--rollback", "--backup", b["name"]]):
            r = run_cli(*args, "--dir", str(dest))
            print(args, r.exit_code, r.stdout[-300:], r.stderr)
    finally:
        processes.stop(daemon)
    r = run_cli("upgrade", "--apply", "--dir", str(dest))
    print("after stop", r.exit_code, r.stdout[-300:], r.stderr)
    assert 0
