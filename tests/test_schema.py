"""`dagpg db upgrade`: Dagster's schema and the kit's, each with its own version table."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from dagpg import pg, schema
from dagpg.cli import cli
from dagpg.errors import SchemaNotAtHeadError


def test_upgrade_creates_both_schemas_then_is_a_no_op(empty_dagster_home):
    first = CliRunner().invoke(cli, ["db", "upgrade", "--json"])
    assert first.exit_code == 0, first.output
    report = json.loads(first.output)
    assert report["before"]["dagster_current"] is None
    assert report["before"]["kit_current"] is None
    assert report["after"]["at_head"] is True
    assert report["changed"] is True

    second = CliRunner().invoke(cli, ["db", "upgrade", "--json"])
    assert second.exit_code == 0
    assert json.loads(second.output)["changed"] is False

    with pg.connection(empty_dagster_home.target) as conn, conn.cursor() as cur:
        cur.execute("SELECT version_num FROM public.alembic_version")
        assert cur.fetchall() == [(report["after"]["dagster_head"],)]
        cur.execute("SELECT version_num FROM dagpg.alembic_version")
        assert cur.fetchall() == [(report["after"]["kit_head"],)]
        cur.execute("SELECT to_regclass('public.runs'), to_regclass('dagpg.backups')")
        assert None not in cur.fetchone()


def test_require_head_names_the_command(empty_dagster_home):
    inst = empty_dagster_home.resolve()
    with pytest.raises(SchemaNotAtHeadError) as err:
        schema.require_head(inst)
    assert str(err.value).endswith("run `dagpg db upgrade`")
    schema.upgrade(inst)
    assert schema.require_head(inst).at_head


def test_kit_schema_behind_head_is_reported_and_upgraded(dagster_home):
    inst = dagster_home.resolve()
    with pg.connection(inst.target) as conn, conn.cursor() as cur:
        cur.execute("DROP SCHEMA dagpg CASCADE")
    status = schema.schema_status(inst)
    assert status.dagster_at_head and not status.kit_at_head
    schema.upgrade(inst)
    assert schema.schema_status(inst).at_head


def test_upgrade_human_output(empty_dagster_home):
    result = CliRunner().invoke(cli, ["db", "upgrade"])
    assert result.exit_code == 0
    assert "Dagster schema  empty -> " in result.stdout
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(schema.kit_alembic_config()).get_current_head()
    assert f"dagpg schema    empty -> {head}" in result.stdout
    silent = CliRunner().invoke(cli, ["db", "upgrade", "--silent"])
    assert (silent.exit_code, silent.stdout, silent.stderr) == (0, "", "")


def test_upgrade_with_wrong_password_is_one_line(empty_dagster_home, monkeypatch):
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", "wrong")
    result = CliRunner().invoke(cli, ["db", "upgrade"])
    assert result.exit_code == 1
    t = empty_dagster_home.target
    assert result.output == (
        f"Error: PostgreSQL at {t.host}:{t.port}/{t.database} rejected the password for user "
        f"{t.user!r}; check DAGSTER_PG_PASSWORD\n"
    )


def test_psycopg2_scheme_is_what_makes_dagster_connect(dagster_home):
    """SQLAlchemy 2.1 maps bare postgresql:// to psycopg 3; dagster.yaml names psycopg2."""
    code = (
        "from dagster import DagsterInstance\n"
        "i = DagsterInstance.get()\n"
        "print(i.run_storage._engine.dialect.driver, len(i.get_run_records()))\n"
    )
    ok = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.split() == ["psycopg2", "0"]

    yaml_path = dagster_home.home / "dagster.yaml"
    yaml_path.write_text(yaml_path.read_text().replace("      scheme: postgresql+psycopg2\n", ""))
    bare = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert bare.returncode != 0
    assert "No module named 'psycopg'" in bare.stderr
