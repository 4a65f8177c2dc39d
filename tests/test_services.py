"""The guide's two services, for real: dagster-webserver and dagster-daemon on one instance."""

from __future__ import annotations

import pytest

from dagpg import pg
from dagpg.localdb import free_port
from tests import processes

pytestmark = pytest.mark.slow


def heartbeats(target) -> list[str]:
    with pg.connection(target) as conn, conn.cursor() as cur:
        cur.execute("SELECT daemon_type FROM daemon_heartbeats ORDER BY daemon_type")
        return [row[0] for row in cur.fetchall()]


def test_webserver_and_daemon_share_the_postgres_instance(dagster_home, tmp_path):
    import dagster

    port = free_port()
    web = processes.start_webserver(dagster_home.home, port, tmp_path)
    daemon = processes.start_daemon(dagster_home.home, tmp_path)
    try:
        info = processes.wait_for(
            lambda: processes.http_json(f"http://127.0.0.1:{port}/server_info"),
            timeout=90, what="webserver /server_info", proc=web,
        )
        assert info["dagster_version"] == dagster.__version__
        found = processes.wait_for(
            lambda: {"SCHEDULER", "SENSOR", "QUEUED_RUN_COORDINATOR"} <= set(
                heartbeats(dagster_home.target)) and heartbeats(dagster_home.target),
            timeout=90, what="daemon heartbeats in PostgreSQL", proc=daemon,
        )
        assert "SCHEDULER" in found
    finally:
        processes.stop(daemon)
        processes.stop(web)
    assert web.returncode is not None and daemon.returncode is not None
