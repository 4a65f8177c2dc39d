"""The pure parts of `dagpg upgrade` and `dagpg db move`: no database, no Dagster process."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from dagpg.backup.retention import Candidate, plan_retention
from dagpg.instance import Instance, PgTarget
from dagpg.upgrade import revisions
from dagpg.upgrade.hints import known_revisions
from dagpg.upgrade.inventory import Inventory, compare, summarize
from dagpg.upgrade.move import yaml_changes
from dagpg.upgrade.record import Versions
from dagpg.verify.database import dagster_head_revision

START = datetime(2026, 3, 1, 1, 30, tzinfo=UTC)


def test_a_pinned_pre_upgrade_backup_outlives_the_calendar():
    nights = [Candidate(f"2026030{i + 1}T013000Z", START + timedelta(days=i), True)
              for i in range(5)]
    pre = Candidate("20260301T020000Z-pre-upgrade", START + timedelta(minutes=30), True,
                    pinned="pre-upgrade (way back from the last upgrade)")
    plan = plan_retention([*nights, pre], keep_daily=2, keep_weekly=0)
    assert plan.keep[pre.name] == ["pre-upgrade (way back from the last upgrade)"]
    assert "20260301T013000Z" in plan.delete  # the same day's nightly backup goes


def test_compare_names_every_difference_in_one_line_each():
    before = Inventory(runs={"r1": "SUCCESS", "r2": "QUEUED"}, events={"r1": [10, 40]},
                       assets={'["a","b"]': 40}, latest={'["a","b"]': [40, "r1"]},
                       partitions={'["a","b"]': ["2026-01-01"]},
                       checks={'["a","b"]|ok': [[1, "r1", "SUCCEEDED"]]},
                       instigators={"o|s": ["SCHEDULE", "RUNNING"]}, ticks={"o|s": [[1, "SUCCESS"]]},
                       instance_id="id-1")
    same = Inventory.from_dict(before.as_dict())
    assert compare(before, same) == []
    after = Inventory.from_dict(before.as_dict())
    after.runs["r2"] = "CANCELED"
    after.events["r1"] = [9, 40]
    del after.partitions['["a","b"]']
    after.ticks["o|s"].append([2, "SKIPPED"])
    after.instance_id = "id-2"
    found = compare(before, after)
    assert found == [
        'run: r2: "QUEUED" before, "CANCELED" after',
        "events of run: r1: [10, 40] before, [9, 40] after",
        "materialized partitions: a/b: missing after the upgrade",
        'ticks of schedule/sensor: o|s: [[1, "SUCCESS"]] before, [[1, "SUCCESS"], [2, '
        '"SKIPPED"]] after',
        "instance id: id-1 before, id-2 after",
    ]
    assert summarize(found).endswith("(and 2 more)")


def test_revisions_behind_ahead_and_at_head():
    script = revisions.scripts()
    head = script.get_current_head()
    assert head == dagster_head_revision()
    assert revisions.classify(head, script) == revisions.AT_HEAD
    assert revisions.classify("7e2f3204cf8e", script) == revisions.BEHIND
    assert revisions.classify("0123456789ab", script) == revisions.AHEAD
    assert revisions.classify(None, script) == revisions.EMPTY
    steps = revisions.steps("7e2f3204cf8e", script)
    assert [s.down_revision for s in steps][0] == "7e2f3204cf8e"
    assert steps[-1].revision == head
    known = known_revisions()
    assert head in known and "7e2f3204cf8e" in known and "0123456789ab" not in known


def test_pip_line_pins_the_lockstep_packages():
    line = Versions("1.11.16", "0.27.16", "20261201T013000Z").pip_line()
    assert line == ('pip install "dagster==1.11.16" "dagster-webserver==1.11.16" '
                    '"dagster-graphql==1.11.16" "dagster-postgres==0.27.16"')


def test_yaml_changes_name_each_key_and_never_a_password():
    def instance(host, port, db, var):
        target = PgTarget(host=host, port=port, database=db, user="dagster", password="s3cret",
                          password_source=f"env:{var}")
        return Instance(home=Path("/h"), yaml_path=Path("/h/dagster.yaml"), target=target,
                        storage_key="storage.postgres", compute_logs_dir=Path("/h/storage"))

    changes = yaml_changes(instance("old-db", 5432, "dagster", "DAGSTER_PG_PASSWORD"),
                           instance("new-db", 5433, "dagster", "NEW_PASSWORD"))
    assert changes == [
        ("storage.postgres.postgres_db.hostname", "old-db", "new-db"),
        ("storage.postgres.postgres_db.port", "5432", "5433"),
        ("storage.postgres.postgres_db.password", "{env: DAGSTER_PG_PASSWORD}",
         "{env: NEW_PASSWORD}"),
    ]
    assert "s3cret" not in repr(changes)


def test_moving_onto_the_same_database_is_refused_before_connecting():
    import pytest

    from dagpg.settings import KitSettings
    from dagpg.upgrade.errors import MoveRefusedError
    from dagpg.upgrade.move import move_database

    target = PgTarget(host="localhost", port=1, database="dagster", user="dagster")
    here = Instance(home=Path("/a"), yaml_path=Path("/a/dagster.yaml"), target=target,
                    storage_key="storage.postgres", compute_logs_dir=Path("/a/storage"))
    there = Instance(home=Path("/b"), yaml_path=Path("/b/dagster.yaml"),
                     target=PgTarget(host="127.0.0.1", port=1, database="dagster",
                                     user="dagster"),
                     storage_key="storage.postgres", compute_logs_dir=Path("/b/storage"))
    with pytest.raises(MoveRefusedError) as err:
        move_database(here, there, KitSettings())
    assert str(err.value) == (
        "/b/dagster.yaml names the same database as /a/dagster.yaml "
        "(postgresql://dagster@localhost:1/dagster); give the DAGSTER_HOME of the new server's "
        "instance")


def test_the_rehearsal_renders_change_steps_and_times(capsys):
    from dagpg.cli.upgrade_cmds import _render_rehearsal
    from dagpg.upgrade.migration import MigrationResult
    from dagpg.upgrade.rehearse import RehearsalReport

    step = revisions.Step("f495c27d5019", "7e2f3204cf8e", "use longtext")
    report = RehearsalReport(
        backup="20261201T013000Z", backup_taken_at="2026-12-01T01:30:00.000Z",
        backup_dagster="1.11.16", live_revision="7e2f3204cf8e", head="f495c27d5019",
        steps=[step], migration=MigrationResult("7e2f3204cf8e", "f495c27d5019",
                                                schema_s=0.25, data_s=1.5),
        restore_s=4.0, verify_s=20.0, backup_s=3.0, duration_s=31.0,
        counts={"runs": 8, "ticks": 3})
    _render_rehearsal(report, as_json=False)
    assert capsys.readouterr().out.splitlines() == [
        "rehearsed on       backup 20261201T013000Z (taken 2026-12-01T01:30:00.000Z with "
        "Dagster 1.11.16)",
        "schema             7e2f3204cf8e -> f495c27d5019",
        "  step             7e2f3204cf8e -> f495c27d5019 (use longtext)",
        "migration took     1.75s (schema 0.25s, data 1.50s)",
        "rehearsal took     31.0s (restore 4.0s, checks 20.0s)",
        "--apply will take  about 25s (backup 3.0s, migration 1.8s, checks 20.0s)",
        "history            8 runs, 3 ticks",
        "checks             every one equal after the migration",
    ]


def test_a_rollback_names_the_kind_of_backup_it_restored(capsys):
    """--rollback --backup may name any backup: the nightly one is not called pre-upgrade."""
    from dagpg.cli.upgrade_cmds import _render_rollback
    from dagpg.upgrade.apply import RollbackReport

    for kind, label in (("pre-upgrade", "pre-upgrade backup"), ("cli", "backup")):
        _render_rollback(RollbackReport(
            backup="20261201T013000Z", revision="7e2f3204cf8e", safety_backup=None, rows=9,
            duration_s=1.0, versions=None, next_steps=[], kind=kind), as_json=False)
        assert capsys.readouterr().out.splitlines()[0] == (
            f"restored       {label} 20261201T013000Z (Dagster schema 7e2f3204cf8e)")


def test_a_source_naming_its_database_by_postgres_url_is_told_to_change_that_url(tmp_path):
    """dagster.yaml may name the database with `postgres_url` (a value or {env: NAME}): the
    keys to change are not postgres_db's, which that file does not have; never a password."""
    from dagpg.instance import resolve_instance

    def home(name: str, url_yaml: str, env: dict[str, str]) -> Instance:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "dagster.yaml").write_text(
            f"storage:\n  postgres:\n    postgres_url: {url_yaml}\n")
        with pytest.MonkeyPatch.context() as mp:
            for key, value in env.items():
                mp.setenv(key, value)
            return resolve_instance(folder)

    old_url = "postgresql://dagster:s3cret@old-db:5432/dagster"
    new = home("new", "postgresql://dagster:n3w@new-db:5433/dagster", {})
    literal = home("literal", old_url, {})
    assert yaml_changes(literal, new) == [(
        "storage.postgres.postgres_url", "postgresql://dagster:***@old-db:5432/dagster",
        "postgresql://dagster:***@new-db:5433/dagster (the password in place of ***)")]
    from_env = home("env", "{env: DAGSTER_PG_URL}", {"DAGSTER_PG_URL": old_url})
    changes = yaml_changes(from_env, new)
    assert changes == [(
        "storage.postgres.postgres_url (environment variable DAGSTER_PG_URL)",
        "postgresql://dagster:***@old-db:5432/dagster",
        "postgresql://dagster:***@new-db:5433/dagster (the password in place of ***)")]
    assert "s3cret" not in repr(changes) and "n3w" not in repr(changes)


def test_a_fresh_heartbeat_says_when_a_stopped_daemons_heartbeats_turn_stale():
    """Dagster deletes no heartbeat when its daemon stops: right after the services are stopped
    the refusal says how long until the guard lets the command through (or --force)."""
    from datetime import UTC, datetime, timedelta

    from dagpg.heartbeats import Heartbeat
    from dagpg.upgrade.errors import ServicesRunningError

    beat = Heartbeat("SCHEDULER", "d", datetime.now(UTC) - timedelta(seconds=4.2))
    message = str(ServicesRunningError(beat, 120, "DagsterDaemon, DagsterWebserver",
                                       "`dagpg upgrade --apply`"))
    assert message.endswith("run `dagpg upgrade --apply` again, or, if they are already "
                            "stopped, pass --force (or wait 116s: a stopped daemon's "
                            "heartbeats turn stale)")
