"""dagpg.instance and `dagpg instance show`: resolution and every error, without a database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from dagpg.cli import cli
from dagpg.instance import resolve_instance

PROJECT_DIR = Path(__file__).resolve().parents[1]
COMMITTED_HOME = PROJECT_DIR / "dagster_home"
SECRET = "s3cret-value-never-shown"


def run(*args, env=None):
    return CliRunner().invoke(cli, list(args), env=env)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", SECRET)
    h = tmp_path / "home"
    h.mkdir()
    return h


def test_committed_dagster_yaml_resolves(monkeypatch):
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", SECRET)
    inst = resolve_instance(COMMITTED_HOME)
    t = inst.target
    assert (t.host, t.port, t.database, t.user) == ("localhost", 5432, "dagster", "dagster")
    assert t.password == SECRET
    assert t.password_source == "env:DAGSTER_PG_PASSWORD"
    assert t.scheme == "postgresql+psycopg2"
    assert inst.compute_logs_dir == COMMITTED_HOME.resolve() / "storage"


def test_no_literal_password_in_the_repository():
    text = (COMMITTED_HOME / "dagster.yaml").read_text()
    assert "env: DAGSTER_PG_PASSWORD" in text
    for path in PROJECT_DIR.rglob("*.y*ml"):
        if ".venv" in path.parts:
            continue
        for line in path.read_text(errors="replace").splitlines():
            if line.strip().startswith("password:"):
                assert line.strip() == "password:", f"{path}: {line}"


def test_show_redacts_and_reports_the_source(monkeypatch):
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", SECRET)
    result = run("instance", "show", "--dagster-home", str(COMMITTED_HOME))
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output
    assert "postgresql://dagster:***@localhost:5432/dagster" in result.output
    assert "from environment variable DAGSTER_PG_PASSWORD (set)" in result.output
    data = json.loads(run("instance", "show", "--json",
                          "--dagster-home", str(COMMITTED_HOME)).output)
    assert data["password_source"] == "env:DAGSTER_PG_PASSWORD"
    assert SECRET not in json.dumps(data)


def test_env_sourced_fields_and_url(home, monkeypatch):
    monkeypatch.setenv("PGHOST_X", "db.internal")
    monkeypatch.setenv("PGPORT_X", "6543")
    (home / "dagster.yaml").write_text(
        "storage:\n  postgres:\n    postgres_db:\n      username: ops\n"
        "      password: {env: DAGSTER_PG_PASSWORD}\n      hostname: {env: PGHOST_X}\n"
        "      db_name: dag\n      port: {env: PGPORT_X}\n"
    )
    t = resolve_instance(home).target
    assert (t.host, t.port, t.user, t.database) == ("db.internal", 6543, "ops", "dag")
    (home / "dagster.yaml").write_text(
        "storage:\n  postgres:\n    postgres_url: {env: PG_URL_X}\n"
    )
    monkeypatch.setenv("PG_URL_X", f"postgresql://u:{SECRET}@h:1234/d?sslmode=require")
    t = resolve_instance(home).target
    assert (t.host, t.port, t.user, t.database) == ("h", 1234, "u", "d")
    assert t.password == SECRET and t.password_source == "env:PG_URL_X"
    assert SECRET not in t.url() and SECRET not in repr(t)
    assert t.libpq_env()["PGSSLMODE"] == "require"


def test_legacy_per_storage_blocks(home):
    block = ("    module: dagster_postgres.{m}\n    class: {c}\n    config:\n      postgres_db:\n"
             "        username: u\n        password: {{env: DAGSTER_PG_PASSWORD}}\n"
             "        hostname: localhost\n        db_name: d\n")
    (home / "dagster.yaml").write_text(
        "run_storage:\n" + block.format(m="run_storage", c="PostgresRunStorage")
        + "event_log_storage:\n" + block.format(m="event_log", c="PostgresEventLogStorage")
        + "schedule_storage:\n" + block.format(m="schedule_storage", c="PostgresScheduleStorage")
    )
    inst = resolve_instance(home)
    assert inst.target.database == "d" and inst.storage_key.startswith("run_storage")


# -- every error: one line, the next step, exit code 2 -----------------------------------


def error_of(result) -> str:
    assert result.output.count("\n") == 1, result.output
    return result.output.strip()


def test_dagster_home_unset(monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    result = run("instance", "show")
    assert result.exit_code == 2
    assert error_of(result) == (
        "Error: DAGSTER_HOME is not set; set it to the folder holding dagster.yaml "
        "(e.g. export DAGSTER_HOME=$PWD/dagster_home) or pass --dagster-home"
    )


def test_dagster_home_not_a_directory(tmp_path, monkeypatch):
    missing = tmp_path / "nope"
    monkeypatch.setenv("DAGSTER_HOME", str(missing))
    result = run("instance", "show")
    assert result.exit_code == 2
    assert error_of(result) == (
        f"Error: DAGSTER_HOME={missing} is not a directory; create it or point DAGSTER_HOME at "
        "the folder holding dagster.yaml"
    )


def test_dagster_yaml_missing(home):
    result = run("instance", "show", "--dagster-home", str(home))
    assert result.exit_code == 2
    assert error_of(result) == (
        f"Error: {home / 'dagster.yaml'} is missing; copy dagster_home/dagster.yaml from the "
        "project or point DAGSTER_HOME at the folder that has it"
    )


def test_dagster_yaml_unparsable(home):
    (home / "dagster.yaml").write_text("storage:\n  postgres: [unclosed\n")
    result = run("instance", "show", "--dagster-home", str(home))
    assert result.exit_code == 2
    assert error_of(result).startswith(f"Error: {home / 'dagster.yaml'} cannot be parsed at line ")
    assert error_of(result).endswith("; fix its YAML")


@pytest.mark.parametrize(
    ("yaml_text", "found"),
    [
        ("storage:\n  sqlite:\n    base_dir: /x\n", "SQLite (storage.sqlite)"),
        ("telemetry:\n  enabled: false\n", "SQLite (Dagster's default: no storage block)"),
        ("storage:\n  mysql:\n    mysql_url: mysql://x\n", "MySQL (storage.mysql)"),
        ("run_storage:\n  module: dagster._core.storage.runs\n  class: SqliteRunStorage\n",
         "dagster._core.storage.runs (run_storage)"),
    ],
)
def test_storage_not_postgres_says_what_was_found(home, yaml_text, found):
    (home / "dagster.yaml").write_text(yaml_text)
    result = run("instance", "show", "--dagster-home", str(home))
    assert result.exit_code == 2
    assert error_of(result) == (
        f"Error: {home / 'dagster.yaml'}: storage is {found}, not PostgreSQL; configure "
        "`storage: postgres:` (see dagster_home/dagster.yaml), or migrate with "
        "`dagpg migrate-from-sqlite`"
    )


def test_password_variable_unset_is_named(monkeypatch):
    monkeypatch.delenv("DAGSTER_PG_PASSWORD", raising=False)
    result = run("instance", "show", "--dagster-home", str(COMMITTED_HOME))
    assert result.exit_code == 2
    assert error_of(result) == (
        "Error: environment variable DAGSTER_PG_PASSWORD is not set; set it to the PostgreSQL "
        "password of the instance (in both services' environments on a server)"
    )


def test_other_env_source_unset_is_named(home):
    (home / "dagster.yaml").write_text(
        "storage:\n  postgres:\n    postgres_db:\n      username: u\n"
        "      hostname: {env: MY_PG_HOST}\n      db_name: d\n"
    )
    result = run("instance", "show", "--dagster-home", str(home))
    assert result.exit_code == 2
    assert "storage.postgres.postgres_db.hostname comes from environment variable MY_PG_HOST, " \
           "which is not set; set it" in error_of(result)


def test_traceback_flag_reraises(monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    result = run("--traceback", "instance", "show")
    assert result.exit_code == 1
    assert type(result.exception).__name__ == "InstanceError"


@pytest.mark.parametrize("command", [["instance", "show"], ["verify"], ["db", "up"],
                                     ["db", "upgrade"], ["backup"], ["restore", "latest"]],
                         ids=" ".join)
def test_an_empty_password_variable_is_an_error_that_says_so(command, tmp_path, monkeypatch):
    """`DAGSTER_PG_PASSWORD=` is not a password: every command that connects says so, before
    it connects (verify would otherwise report a rejected login)."""
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", "")
    monkeypatch.setenv("DAGPG_CONFIG", str(tmp_path / "none.yml"))
    (tmp_path / "none.yml").write_text("dagpg: {}\n")
    result = run(*command, "--dagster-home", str(COMMITTED_HOME))
    assert result.exit_code == 2, result.output
    assert error_of(result) == (
        "Error: environment variable DAGSTER_PG_PASSWORD is set but empty; set it to the "
        "PostgreSQL password of the instance (in both services' environments on a server)"
    )


def test_an_empty_password_counts_as_unknown_where_none_is_needed(monkeypatch):
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", "")
    inst = resolve_instance(COMMITTED_HOME, require_password=False)
    assert inst.target.password is None
    assert "PGPASSWORD" not in inst.target.libpq_env()
