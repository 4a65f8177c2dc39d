"""`dagpg stats`, the disk check of `dagpg verify`, and `dagpg nightly` (the OS task's call) on the
history prune_fixture.py writes (shared with test_prune.py: built once per session)."""

from __future__ import annotations

import json
import re
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from dagpg.cli import cli
from dagpg.prune.disk import Location
from dagpg.settings import Retention
from dagpg.verify import checks
from tests import pgharness, prune_support
from tests.test_prune import all_runs, expected

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def template(pg_server, tmp_path_factory):
    return prune_support.shared_template(pg_server, tmp_path_factory)


@pytest.fixture
def history(pg_server, template, tmp_path, monkeypatch):
    clone = prune_support.clone(pg_server, template, tmp_path)
    monkeypatch.setenv("DAGSTER_HOME", str(clone.home))
    monkeypatch.setenv(pgharness.PASSWORD_VAR, pg_server.admin.password or "")
    monkeypatch.delenv("DAGPG_CONFIG", raising=False)
    monkeypatch.delenv("PROJECT_ENV", raising=False)
    yield clone
    pg_server.drop_database(clone.database)


def run(*args) -> dict:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output + result.stderr
    return json.loads(result.stdout)


def test_stats_counts_tables_events_growth_and_disk(history):
    target = history.target
    report = run("stats", "--json", "--exact")
    tables = {t["table"]: t for t in report["tables"]}
    for table in ("public.event_logs", "public.runs", "public.run_tags", "dagpg.backups"):
        (count,), = prune_support.rows(target, f"SELECT count(*) FROM {table}")  # noqa: S608
        assert tables[table]["rows"] == count and tables[table]["exact"]
        assert tables[table]["total_bytes"] >= tables[table]["index_bytes"] > 0
    (size,), = prune_support.rows(target, "SELECT pg_database_size(current_database())")
    assert abs(report["database_bytes"] - size) < 1_000_000
    by_type = dict(prune_support.rows(
        target, "SELECT coalesce(dagster_event_type, 'LOG_MESSAGE'), count(*) FROM event_logs "
                "GROUP BY 1"))
    assert report["events_by_type"] == by_type

    days = report["growth_per_day"]
    today = datetime.now(UTC).date()
    assert [d["day"] for d in days] == [(today - timedelta(days=n)).isoformat()
                                        for n in range(29, -1, -1)]
    truth = dict(prune_support.rows(
        target, "SELECT timestamp::date::text, count(*) FROM event_logs WHERE timestamp >= %s "
                "GROUP BY 1", (datetime.combine(today - timedelta(days=29), datetime.min.time()),)))
    assert {d["day"]: d["events"] for d in days if d["events"]} == truth
    runs = dict(prune_support.rows(
        target, "SELECT create_timestamp::date::text, count(*) FROM runs "
                "WHERE create_timestamp >= current_date - 29 GROUP BY 1"))
    assert {d["day"]: d["runs"] for d in days if d["runs"]} == runs
    assert days[-1]["events"] > 0 and days[-1]["bytes"] > 0  # the recent era is today

    (per_event, per_run, recent, recent_runs), = prune_support.rows(target, """
        SELECT pg_total_relation_size('event_logs')::float8 / (SELECT count(*) FROM event_logs),
               pg_total_relation_size('runs')::float8 / (SELECT count(*) FROM runs),
               (SELECT max(id) - min(id) + 1 FROM event_logs
                 WHERE timestamp >= now() at time zone 'utc' - interval '7 days'),
               (SELECT count(*) FROM runs
                 WHERE create_timestamp >= now() at time zone 'utc' - interval '7 days')""")
    growth = (recent * per_event + recent_runs * per_run) / 7
    assert report["growth_bytes_per_day"] == pytest.approx(growth, rel=0.01)
    disk = {d["role"]: d for d in report["disk"]}
    (data_dir,), = prune_support.rows(target, "SHOW data_directory")
    assert disk["database"]["path"] == data_dir
    usage = shutil.disk_usage(data_dir)
    assert disk["database"]["free_pct"] == pytest.approx(100 * usage.free / usage.total, abs=1)
    assert disk["database"]["days_left"] == pytest.approx(
        disk["database"]["free_bytes"] / growth, rel=0.05)
    assert disk["compute logs"]["path"] == str(history.home / "storage")
    assert Path(disk["backups"]["path"]) == history.home.parent / "backups"


def test_stats_text_shows_the_same(history):
    result = CliRunner().invoke(cli, ["stats"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("database: ")
    for needle in ("public.event_logs", "LOG_MESSAGE", "DAYS LEFT", "growth: "):
        assert needle in result.stdout, needle


def test_verify_disk_check_on_the_real_disk(history):
    """The real free space of this machine's disk, judged against thresholds set around it."""
    config = history.home.parent / "config" / "config.yml"
    base = config.read_text()

    def disk_check(warn_pct: float, fail_pct: float, days: float = 0.001) -> dict:
        config.write_text(base.replace("  retention:\n", (
            f"  retention:\n    disk_warn_free_pct: {warn_pct}\n"
            f"    disk_fail_free_pct: {fail_pct}\n    disk_warn_days_left: {days}\n")))
        result = CliRunner().invoke(cli, ["verify", "--json", "--webserver-url",
                                          "http://127.0.0.1:9"])
        assert result.exit_code == 1  # no webserver, no daemon here
        (check,) = [c for c in json.loads(result.stdout)["checks"]
                    if c["name"] == "operations.disk"]
        return check

    usage = shutil.disk_usage(history.home)
    free = 100 * usage.free / usage.total
    assert 1 < free < 99
    ok = disk_check(free / 2, free / 4)
    assert ok["status"] == "ok", ok
    assert ok["detail"].startswith(f"database {free:.0f}% free, ")
    database = next(p for p in ok["data"]["locations"] if p["role"] == "database")
    assert database["free_pct"] == pytest.approx(free, abs=1) and database["days_left"] > 0
    warn = disk_check(min(99.5, free + 0.5), free / 4)
    assert warn["status"] == "warn" and warn["detail"].endswith(
        "plan for more space, or prune sooner (dagpg.retention in config.yml)")
    days = disk_check(free / 2, free / 4, days=database["days_left"] * 10)
    assert days["status"] == "warn" and re.search(r"(days|years) left \(", days["detail"])
    fail = disk_check(min(99.9, free + 0.9), min(99.5, free + 0.5))
    assert fail["status"] == "fail" and "PostgreSQL stops accepting writes on a full disk" \
        in fail["detail"]


@pytest.mark.parametrize(("free", "days", "status"), [
    (50, None, "ok"), (50, 400, "ok"), (19, None, "warn"), (50, 29, "warn"), (4.9, 400, "fail"),
])
def test_disk_thresholds(free, days, status):
    place = Location("database", Path("/data"), total_bytes=1000, free_bytes=int(free * 10),
                     days_left=days)
    assert checks.disk(checks.DiskObservation([place]), Retention()).status == status


def test_disk_unmeasured_warns_and_without_an_instance_skips():
    unknown = Location("database", None, note="the server db.example is not this machine")
    result = checks.disk(checks.DiskObservation([unknown]), Retention())
    assert result.status == "warn" and "db.example" in result.detail
    assert checks.disk(None, Retention()).status == "skip"


def test_nightly_backs_up_when_due_then_prunes(history):
    want = expected(history, all_runs(history))
    first = run("nightly", "--backup-if-older-than", "12", "--json")
    backup, pruned = first["steps"]
    assert backup["skipped"].startswith("backup ") and "h ago, less than 12 h" in backup["skipped"]
    assert "backup" not in backup  # the template's backup, minutes old, counts
    assert pruned["history"]["runs_deleted"] == len(want["deleted"])
    assert first["complete"]
    assert set(all_runs(history)).isdisjoint(want["deleted"])

    second = run("nightly", "--json")  # without the flag: always a backup
    backup, pruned = second["steps"]
    assert backup["skipped"] is None and backup["backup"]["kind"] == "nightly"
    assert Path(backup["backup"]["path"]).parent == history.home.parent / "backups"
    assert pruned["history"]["runs_deleted"] == 0 and pruned["history"]["complete"]
    assert pruned["history"]["backup"]["name"] == backup["backup"]["name"]  # the undo: this one


def test_nightly_prune_can_be_switched_off(history):
    config = history.home.parent / "config" / "config.yml"
    config.write_text(config.read_text().replace("  retention:\n",
                                                 "  retention:\n    nightly: false\n"))
    before = prune_support.digest(history.target, history.home)
    report = run("nightly", "--backup-if-older-than", "12", "--json")
    assert report["steps"][1]["skipped"] == "dagpg.retention.nightly is false"
    after = prune_support.digest(history.target, history.home)
    assert after["event_logs"] == before["event_logs"] and after["runs"] == before["runs"]


def test_a_second_prune_waits_then_refuses_and_the_nightly_skips_it(history, monkeypatch):
    """One prune per instance at a time: the other is refused with who holds the lock; the
    nightly step, finding the prune busy (Dagster's and the OS task's at once), skips it."""
    from dagpg import pg
    from dagpg.nightly import run_nightly
    from dagpg.prune import run as prune_run
    from dagpg.settings import load_settings

    monkeypatch.setattr(prune_run, "LOCK_WAIT_S", 0.5)
    before = prune_support.digest(history.target, history.home)
    with pg.connection(history.target, autocommit=True) as holder, holder.cursor() as cur:
        cur.execute("SET application_name = 'another dagpg prune'")
        cur.execute("SELECT pg_advisory_lock(%s)", (prune_run.LOCK_KEY,))
        result = CliRunner().invoke(cli, ["prune", "--yes"])
        assert result.exit_code == 1
        line = result.stderr.strip().splitlines()[-1]
        assert line.startswith(f"Error: another dagpg prune of {history.target.where} is "
                               "running (session ")
        assert "(another dagpg prune) since" in line and line.endswith(
            "wait for it to finish and run the command again")
        report = run_nightly(history.instance(), load_settings(dagster_home=history.home),
                             backup_if_older_than_h=12)
    backup, prune = report.steps
    assert backup.skipped and prune.history is None and report.complete
    assert prune.skipped.startswith("another dagpg prune of")
    assert prune_support.digest(history.target, history.home) == before
