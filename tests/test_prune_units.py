"""The prune's pure parts: event type names against the installed Dagster, ages and dates,
retention settings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from dagpg.errors import ConfigurationError
from dagpg.prune import AgeError, make_policy
from dagpg.prune import events as ev
from dagpg.settings import KitSettings, load_settings

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def test_event_type_names_are_dagsters():
    from dagster._core.events import PIPELINE_EVENTS, DagsterEventType

    known = {t.value for t in DagsterEventType}
    assert set(ev.BULKY_TYPES) <= known
    assert set(ev.RUN_STATUS_TYPES) == {t.value for t in PIPELINE_EVENTS}
    assert not set(ev.BULKY_TYPES) & set(ev.RUN_STATUS_TYPES)
    kept_asset_events = {"ASSET_MATERIALIZATION", "ASSET_OBSERVATION",
                         "ASSET_MATERIALIZATION_PLANNED", "ASSET_FAILED_TO_MATERIALIZE",
                         "ASSET_CHECK_EVALUATION", "ASSET_CHECK_EVALUATION_PLANNED",
                         "STEP_START", "STEP_SUCCESS", "STEP_FAILURE"}
    assert not kept_asset_events & set(ev.BULKY_TYPES)


def test_finished_and_backfill_statuses_are_dagsters():
    from dagster._core.execution.backfill import BulkActionStatus
    from dagster._core.storage.asset_check_execution_record import (
        COMPLETED_ASSET_CHECK_EXECUTION_RECORD_STATUSES,
    )
    from dagster._core.storage.dagster_run import FINISHED_STATUSES

    assert set(ev.COMPLETED_CHECK_STATUSES) == {
        s.value for s in COMPLETED_ASSET_CHECK_EXECUTION_RECORD_STATUSES}
    assert set(ev.FINISHED_STATUSES) == {s.value for s in FINISHED_STATUSES}
    assert set(ev.BACKFILL_DONE_STATUSES) <= {s.value for s in BulkActionStatus}
    in_progress = {s.value for s in BulkActionStatus} - set(ev.BACKFILL_DONE_STATUSES)
    assert in_progress == {"REQUESTED", "CANCELING", "FAILING"}


@pytest.mark.parametrize(("age", "delta"), [
    ("30", timedelta(days=30)), ("30d", timedelta(days=30)), ("12h", timedelta(hours=12)),
    ("8w", timedelta(weeks=8)), ("90 min", timedelta(minutes=90)), (1.5, timedelta(days=1.5)),
    ("2 days", timedelta(days=2)), ("30s", timedelta(seconds=30)), ("1 minute", timedelta(minutes=1)),
    ("6mo", timedelta(days=180)), ("1y", timedelta(days=365)),
])
def test_ages(age, delta):
    policy = make_policy(KitSettings(), runs_older_than=age, logs_older_than="1d", now=NOW)
    assert policy.runs_before == NOW - delta
    assert policy.logs_before == NOW - timedelta(days=1)


def test_a_date_is_a_cutoff():
    policy = make_policy(KitSettings(), runs_older_than="2025-01-31", now=NOW)
    assert policy.runs_before == datetime(2025, 1, 31, tzinfo=UTC)
    policy = make_policy(KitSettings(), runs_older_than="2025-01-31T10:00:00+02:00", now=NOW)
    assert policy.runs_before == datetime(2025, 1, 31, 8, tzinfo=UTC)


def test_defaults_come_from_the_settings():
    policy = make_policy(KitSettings(), now=NOW)
    assert policy.logs_before == NOW - timedelta(days=30)
    assert policy.runs_before == NOW - timedelta(days=365)
    assert (policy.keep_last_runs, policy.batch_rows) == (20, 5000)
    assert make_policy(KitSettings(), only="logs", now=NOW).runs_before is None
    assert make_policy(KitSettings(), only="runs", now=NOW).logs_before is None


def test_older_than_is_the_runs_tier_or_with_only_logs_the_logs_tier():
    policy = make_policy(KitSettings(), older_than="90d", now=NOW)
    assert policy.runs_before == NOW - timedelta(days=90)
    assert policy.logs_before == NOW - timedelta(days=30)
    policy = make_policy(KitSettings(), older_than="7d", only="logs", now=NOW)
    assert (policy.logs_before, policy.runs_before) == (NOW - timedelta(days=7), None)
    policy = make_policy(KitSettings(), older_than="2y", logs_older_than="6mo", now=NOW)
    assert policy.runs_before == NOW - timedelta(days=730)
    assert policy.logs_before == NOW - timedelta(days=180)
    with pytest.raises(AgeError, match="^--older-than 'soon': not an age or a date"):
        make_policy(KitSettings(), older_than="soon", only="logs", now=NOW)
    with pytest.raises(ConfigurationError, match="give --older-than or --runs-older-than, not"):
        make_policy(KitSettings(), older_than="9d", runs_older_than="9d", now=NOW)
    with pytest.raises(ConfigurationError, match="give --older-than or --logs-older-than, not"):
        make_policy(KitSettings(), older_than="9d", logs_older_than="9d", only="logs", now=NOW)


def test_an_age_longer_than_the_calendar_keeps_everything():
    from dagpg.settings import Retention

    forever = make_policy(KitSettings(retention=Retention(logs_days=float("inf"),
                                                         runs_days=1e7)), now=NOW)
    assert forever.logs_before == forever.runs_before == datetime(1, 1, 2, tzinfo=UTC)
    assert make_policy(KitSettings(), older_than="1000000d", now=NOW).runs_before.year == 1


@pytest.mark.parametrize(("age", "message"), [
    ("soon", "--runs-older-than 'soon': not an age or a date; give days (30), a number with a "
             "unit (12h, 30d, 8w) or a date (2025-01-31)"),
    ("3 fortnights", "--runs-older-than '3 fortnights': unknown unit 'fortnights'; give days"),
    ("0", "--runs-older-than '0': must be more than 0; give days"),
    ("-5d", "--runs-older-than '-5d': must be more than 0; give days"),
    ("2999-01-01", "--runs-older-than '2999-01-01': a date in the future would prune "
                   "everything; give days"),
    ("1e400", "--runs-older-than '1e400': not an age or a date"),
])
def test_bad_ages(age, message):
    with pytest.raises(AgeError) as info:
        make_policy(KitSettings(), runs_older_than=age, now=NOW)
    assert str(info.value).startswith(message)
    assert info.value.exit_code == 2


def test_bad_overrides():
    with pytest.raises(ConfigurationError, match="--only 'all'"):
        make_policy(KitSettings(), only="all")
    with pytest.raises(ConfigurationError, match="--batch-rows 0"):
        make_policy(KitSettings(), batch_rows=0)
    with pytest.raises(ConfigurationError, match="--keep-last-runs -1"):
        make_policy(KitSettings(), keep_last_runs=-1)
    with pytest.raises(ConfigurationError, match="--keep-last-runs 0: give a whole number, 1 or"):
        make_policy(KitSettings(), keep_last_runs=0)


@pytest.mark.parametrize(("line", "message"), [
    ("logs_days: 0", "dagpg.retention.logs_days: input should be greater than 0, got 0"),
    ("runs_days: -30", "dagpg.retention.runs_days: input should be greater than 0, got -30"),
    ("runs_days: a year", "dagpg.retention.runs_days: input should be a valid number, "
                          "got 'a year'"),
    ("batch_rows: 0", "dagpg.retention.batch_rows: input should be greater than 0, got 0"),
    ("keep_last_runs: 0", "dagpg.retention.keep_last_runs: input should be greater than 0, got 0"),
    ("keep_last_runs: -1", "dagpg.retention.keep_last_runs: input should be greater than 0, "
                           "got -1"),
    ("batch_rows: 2.5", "dagpg.retention.batch_rows: input should be a valid integer, got 2.5"),
    ("lock_timeout: soon", "dagpg.retention: value error, lock_timeout: not a duration, got "
                           "'soon'; give milliseconds (2000) or a number with a unit (2s, 500ms, "
                           "2min)"),
    ("statement_timeout: 0", "dagpg.retention: value error, statement_timeout: must be more "
                             "than 0, got 0"),
    ("lock_timeout: 2s\n    lock_timeout_ms: 3", "dagpg.retention: value error, give "
                                                 "lock_timeout or lock_timeout_ms, not both"),
])
def test_bad_retention_settings(tmp_path, line, message):
    config = _retention(tmp_path, line)
    with pytest.raises(ConfigurationError) as info:
        load_settings(config, env="dev")
    assert str(info.value) == f"{config}: {message} (PROJECT_ENV=dev)"


def _retention(tmp_path, lines: str):
    config = tmp_path / "config.yml"
    config.write_text(f"dagpg:\n  retention:\n    {lines}\n")
    return config


@pytest.mark.parametrize(("lines", "lock_ms", "statement_s"), [
    ("lock_timeout: 5s", 5000, 120), ("lock_timeout: 500", 500, 120),
    ("statement_timeout: 2min", 2000, 120), ("statement_timeout: 30000", 2000, 30),
    ("lock_timeout: 250ms\n    statement_timeout: 1h", 250, 3600),
])
def test_timeouts_as_postgresql_names_them(tmp_path, lines, lock_ms, statement_s):
    retention = load_settings(_retention(tmp_path, lines), env="dev").retention
    assert (retention.lock_timeout_ms, retention.statement_timeout_s) == (lock_ms, statement_s)


def test_the_project_config_holds_the_defaults():
    from tests.conftest import PROJECT_DIR

    retention = load_settings(PROJECT_DIR / "config" / "config.yml", env="dev").retention
    assert retention == KitSettings().retention


def test_a_database_without_dagsters_schema_is_one_line(empty_dagster_home):
    from click.testing import CliRunner

    from dagpg.cli import cli
    from tests.backup_support import error_line

    result = CliRunner().invoke(cli, ["prune", "--yes", "--force"])
    assert result.exit_code == 1
    line = error_line(result)
    assert line.startswith("Error: prune stopped before it was done: PostgreSQL refused a "
                           'statement (relation "runs" does not exist')
    assert "if `dagpg db upgrade` has not run on this instance, run it first" in line


def test_bytes_reclaimed_is_never_negative():
    from dagpg.prune import PruneReport

    report = PruneReport(policy=make_policy(KitSettings(), now=NOW), dry_run=False)
    report.sizes_before, report.sizes_after = {"runs": 8192, "event_logs": 90000}, \
        {"runs": 24576, "event_logs": 90000}  # VACUUM added the maps of a small table
    assert report.bytes_reclaimed == 0 and report.as_dict()["bytes_reclaimed"] == 0
    report.sizes_after = {"runs": 8192, "event_logs": 40000}
    assert report.as_dict()["bytes_reclaimed"] == 50000
