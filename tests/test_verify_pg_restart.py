"""A PostgreSQL restart under a running webserver: Dagster's webserver keeps one pooled database
connection per storage (`optimize_for_webserver`), and the first request that uses a connection
the restart killed fails with HTTP 500. `dagpg verify` (and the keeper's probe) asks once more,
so one stale connection is not reported as an unhealthy webserver; a webserver that keeps
failing still is.
"""

from __future__ import annotations

import json
import os

import pytest

from dagpg.localdb import free_port
from dagpg.verify import webserver
from tests import faults, pgharness, processes

pytestmark = pytest.mark.slow


@pytest.fixture
def restarted(tmp_path):
    """A webserver on a throwaway server of its own, which has answered once, and its server
    stopped with -m immediate and started again."""
    server, _root = pgharness.start_throwaway()
    proc = None
    try:
        target = server.target(server.create_database("dagster"))
        home = pgharness.write_dagster_home(tmp_path / "home", target)
        port = free_port()
        env = {**os.environ, pgharness.PASSWORD_VAR: server.admin.password or ""}
        proc = processes.start_webserver(home, port, tmp_path, env=env)
        base = webserver.BaseUrl.parse(f"http://127.0.0.1:{port}")
        processes.wait_for(lambda: processes.http_json(f"http://127.0.0.1:{port}/server_info"),
                           timeout=120, what="the webserver", proc=proc)
        first = webserver.observe(base, timeout=10)
        assert first.status and not first.status_error, first.status_error  # pooled now
        faults.stop_immediately(server.cluster)
        server.cluster.up()
        yield base
    finally:
        if proc is not None:
            processes.stop(proc)
        server.cluster.down()


def test_one_stale_connection_after_a_restart_is_not_a_failed_check(restarted):
    client = webserver.WebClient(restarted, 10)
    payload = json.dumps({"query": webserver.STATUS_QUERY}).encode()
    status, _headers, _body = client._request(
        "POST", "/graphql", body=payload, retry=False,
        headers={"Content-Type": "application/json", "Accept": "application/json"})
    assert status == 500  # the fault is real: the webserver's pooled connection died
    # The next storage's stale connection fails the next request; verify asks each twice.
    obs = webserver.observe(restarted, timeout=10)
    assert obs.status and not obs.status_error and not obs.page_error, obs
