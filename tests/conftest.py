"""Fixtures: a real PostgreSQL server per session, a fresh database and DAGSTER_HOME per test."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from dagpg import schema
from dagpg.instance import Instance, PgTarget, resolve_instance
from tests import pgharness

PROJECT_DIR = Path(__file__).resolve().parents[1]
WORKSPACE_YAML = PROJECT_DIR / "dagster_home" / "workspace.yaml"


@dataclass
class TestInstance:
    """A DAGSTER_HOME (set in the environment) pointing at its own database."""

    __test__ = False

    home: Path
    database: str
    target: PgTarget
    server: pgharness.PgServer

    def resolve(self) -> Instance:
        return resolve_instance(self.home)


@pytest.fixture(autouse=True)
def _probe_loopback_only(monkeypatch):
    """`dagpg verify --public-url` probes this machine's non-loopback addresses for exposed
    webserver ports; tests send traffic to loopback only, so 127.0.0.2 stands in for them."""
    monkeypatch.setattr("dagpg.verify.access.machine_addresses", lambda: ["127.0.0.2"])


@pytest.fixture(scope="session")
def pg_server():
    url = os.environ.get("TEST_PG_URL")
    if url:
        yield pgharness.from_url(url)
        return
    server, root = pgharness.start_throwaway()
    try:
        yield server
    finally:
        server.cluster.destroy()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def template_database(pg_server, tmp_path_factory):
    """A database with Dagster's and the kit's schemas at head, cloned for each test."""
    name = pg_server.create_database(f"dagpg_template_{os.getpid()}")
    home = pgharness.write_dagster_home(tmp_path_factory.mktemp("template_home"),
                                        pg_server.target(name))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(pgharness.PASSWORD_VAR, pg_server.admin.password or "")
        schema.upgrade(resolve_instance(home))
    yield name
    pg_server.drop_database(name)


def _instance(pg_server, database, tmp_path, monkeypatch) -> TestInstance:
    target = pg_server.target(database)
    home = pgharness.write_dagster_home(tmp_path / "dagster_home", target)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv(pgharness.PASSWORD_VAR, pg_server.admin.password or "")
    return TestInstance(home=home, database=database, target=target, server=pg_server)


@pytest.fixture
def dagster_home(pg_server, template_database, tmp_path, monkeypatch):
    """A fresh database at head and a DAGSTER_HOME pointing at it (DAGSTER_HOME is set)."""
    database = pg_server.create_database(template=template_database)
    yield _instance(pg_server, database, tmp_path, monkeypatch)
    pg_server.drop_database(database)


@pytest.fixture
def empty_dagster_home(pg_server, tmp_path, monkeypatch):
    """Like dagster_home, but the database is empty (no schema)."""
    database = pg_server.create_database()
    yield _instance(pg_server, database, tmp_path, monkeypatch)
    pg_server.drop_database(database)
