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


# -- an interrupted creation (issue 13, item 1) and the kit's own output (item 8) ------------
def missing_tables(target) -> set[str]:
    """Tables Dagster's models define that the database lacks."""
    from dagster._core.storage.event_log.schema import SqlEventLogStorageMetadata
    from dagster._core.storage.runs.schema import RunStorageSqlMetadata
    from dagster._core.storage.schedules.schema import ScheduleStorageSqlMetadata

    names = {t.name for md in (RunStorageSqlMetadata, SqlEventLogStorageMetadata,
                               ScheduleStorageSqlMetadata) for t in md.sorted_tables}
    with pg.connection(target) as conn, conn.cursor() as cur:
        cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return names - {r[0] for r in cur.fetchall()}


def secondary_indexes(target) -> set[str]:
    with pg.connection(target) as conn, conn.cursor() as cur:
        cur.execute("SELECT name FROM secondary_indexes WHERE migration_completed IS NOT NULL")
        return {r[0] for r in cur.fetchall()}


def test_a_creation_killed_halfway_is_repaired_by_the_next_upgrade(empty_dagster_home):
    """SIGKILL `dagpg db upgrade` while Dagster creates its event tables: alembic_version is
    stamped at head, concurrency_slots is missing. The next upgrade rebuilds the schema (it
    holds no history), printing only the kit's lines."""
    from tests import faults
    from tests.processes import BIN

    target = empty_dagster_home.target
    faults.notice_dead_clients(target)
    with faults.creation_blocked(target, "concurrency_slots"):
        proc = subprocess.Popen([str(BIN / "dagpg"), "db", "upgrade"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        faults.kill_while_creating(proc, target, "concurrency_slots")
    before = schema.schema_status(empty_dagster_home.resolve())
    assert before.dagster_at_head and "concurrency_slots" in missing_tables(target)

    result = CliRunner().invoke(cli, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0].endswith(" (repaired)")
    repaired = result.stdout.splitlines()[-1]
    assert repaired.startswith("repaired        Dagster's schema was incomplete (tables ")
    assert "concurrency_slots" in repaired and repaired.endswith("held no history: rebuilt")
    assert not missing_tables(target) and len(secondary_indexes(target)) == 11
    assert all(line.startswith("… ") for line in result.stderr.splitlines()), result.stderr


def test_repairs_keep_history_and_a_missing_column_is_refused(dagster_home):
    """With history, nothing is dropped: missing tables, indexes and data migrations are
    added (Dagster's own tqdm bars stay off stderr); a missing column is one line, exit 1."""
    target = dagster_home.target
    fresh = secondary_indexes(target)  # every data migration a fresh schema records
    with pg.connection(target) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO kvs (key, value) VALUES ('kept', 'history')")
        cur.execute("DROP TABLE concurrency_slots")
        cur.execute("DROP INDEX idx_run_tags")
        cur.execute("DELETE FROM secondary_indexes")  # as if killed before Dagster marks them
    result = CliRunner().invoke(cli, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert "keeping its history" in result.stdout
    assert "it/s" not in result.stderr and all(
        line.startswith("… ") for line in result.stderr.splitlines()), result.stderr
    assert not missing_tables(target) and secondary_indexes(target) == fresh
    with pg.connection(target) as conn, conn.cursor() as cur:
        cur.execute("SELECT indexname FROM pg_indexes WHERE indexname = 'idx_run_tags'")
        assert cur.fetchall() == [("idx_run_tags",)]
        cur.execute("SELECT value FROM kvs WHERE key = 'kept'")
        assert cur.fetchall() == [("history",)]
        cur.execute("ALTER TABLE runs DROP COLUMN backfill_id")
    refused = CliRunner().invoke(cli, ["db", "upgrade", "--silent"])
    assert refused.exit_code == 1
    assert refused.output.splitlines()[-1] == (
        f"Error: Dagster's schema in {target.where} is stamped "
        f"{schema.schema_status(dagster_home.resolve()).dagster_head} but lacks column "
        "runs.backfill_id; index runs.idx_runs_by_backfill_id, and it holds history, so it is "
        "not rebuilt; restore the database from a backup (`dagpg restore latest`), or migrate "
        "its history into an empty database")
