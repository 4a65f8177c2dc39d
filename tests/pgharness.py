"""The real PostgreSQL the tests talk to: $TEST_PG_URL, or a throwaway cluster started here.

A test that needs PostgreSQL fails (never skips) when no server can be had and CI or
DAGPG_REQUIRE_PG (set by scripts/test.sh) is set.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from psycopg2 import sql

from dagpg import pg
from dagpg.errors import DagpgError
from dagpg.instance import PgTarget
from dagpg.localdb import LocalCluster, _hand_to_server_user, free_port

PASSWORD_VAR = "DAGSTER_PG_PASSWORD"


@dataclass
class PgServer:
    """A server the tests may create and drop databases on (as a superuser)."""

    admin: PgTarget  # superuser, database "postgres"
    cluster: LocalCluster | None = None

    def target(self, database: str) -> PgTarget:
        return replace(self.admin, database=database, password_source=f"env:{PASSWORD_VAR}")

    def create_database(self, name: str | None = None, template: str | None = None) -> str:
        name = name or f"t_{uuid.uuid4().hex[:12]}"
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            query += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        with pg.connection(self.admin, autocommit=True) as conn, conn.cursor() as cur:
            cur.execute(query)
        return name

    def drop_database(self, name: str) -> None:
        with pg.connection(self.admin, autocommit=True) as conn, conn.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))


def unavailable(reason: str):
    """Fail under CI (or scripts/test.sh), skip elsewhere: a database test never silently skips
    in CI."""
    if os.environ.get("CI") or os.environ.get("DAGPG_REQUIRE_PG"):
        pytest.fail(f"PostgreSQL is required in CI: {reason}", pytrace=False)
    pytest.skip(f"no PostgreSQL: {reason}")


def from_url(url: str) -> PgServer:
    parts = urlsplit(url)
    admin = PgTarget(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 5432,
        database=unquote(parts.path.lstrip("/")) or "postgres",
        user=unquote(parts.username or "postgres"),
        password=unquote(parts.password) if parts.password else None,
        password_source="env:TEST_PG_URL",
    )
    try:
        pg.connect(admin, retries=1).close()
    except DagpgError as exc:
        unavailable(f"TEST_PG_URL is set but unusable: {exc}")
    return PgServer(admin=admin)


def start_throwaway(bindir: Path | None = None) -> tuple[PgServer, Path]:
    """A fresh cluster on a free port (PostgreSQL programs from `bindir`, default: the search)."""
    root = Path(tempfile.mkdtemp(prefix="dagpg-test-pg-"))
    root.chmod(0o755)
    _hand_to_server_user(root)
    cluster = LocalCluster(
        root=root / "cluster",
        port=free_port(),
        bindir=bindir,
        settings={
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "300",
        },
    )
    try:
        cluster.up()
    except DagpgError as exc:
        shutil.rmtree(root, ignore_errors=True)
        unavailable(str(exc))
    password = secrets.token_urlsafe(18)
    cluster.ensure_role("postgres", password, superuser=True)
    admin = PgTarget(
        host="127.0.0.1", port=cluster.port, database="postgres", user="postgres",
        password=password, password_source=f"env:{PASSWORD_VAR}",
    )
    return PgServer(admin=admin, cluster=cluster), root


def write_dagster_home(home: Path, target: PgTarget, *, extra: str = "") -> Path:
    """A DAGSTER_HOME whose dagster.yaml points at `target`, password from the environment."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(
        f"""storage:
  postgres:
    postgres_db:
      username: {target.user}
      password:
        env: {PASSWORD_VAR}
      hostname: {target.host}
      db_name: {target.database}
      port: {target.port}
      scheme: postgresql+psycopg2
run_coordinator:
  module: dagster._core.run_coordinator
  class: QueuedRunCoordinator
  config:
    max_concurrent_runs: 4
telemetry:
  enabled: false
{extra}""",
        encoding="utf-8",
    )
    return home
