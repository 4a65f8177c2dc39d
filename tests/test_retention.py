"""Retention: keep the newest backup of each of the last N days and M weeks, and always the
newest backup that verified. A pure plan over made-up dates, then `dagpg backups prune` over
real backup folders renamed to made-up dates."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta

from dagpg import pg
from dagpg.backup import catalog
from dagpg.backup.manifest import iso, new_name
from dagpg.backup.retention import Candidate, plan_retention
from tests.backup_support import backup, backup_names, run_cli

START = datetime(2026, 1, 1, 9, 30, tzinfo=UTC)  # a Thursday


def nightly(days: int, *, at: datetime = START, verified=lambda i: True) -> list[Candidate]:
    return [Candidate(new_name(at + timedelta(days=i)), at + timedelta(days=i), verified(i))
            for i in range(days)]


def test_daily_and_weekly_over_sixty_nights():
    backups = nightly(60)  # 2026-01-01 .. 2026-03-01
    plan = plan_retention(backups, keep_daily=7, keep_weekly=4)
    kept = sorted(plan.keep)
    dailies = [c.name for c in backups[-7:]]
    # Weekly: the newest backup of each of the last 4 ISO weeks: the Sundays ending weeks 6-8
    # and the newest of week 9 (Sunday 2026-03-01 is the last night).
    weeklies = [new_name(START + timedelta(days=d)) for d in (38, 45, 52, 59)]
    assert kept == sorted(set(dailies) | set(weeklies))
    assert len(kept) == 10
    assert sorted(plan.delete + kept) == sorted(c.name for c in backups)
    assert plan.keep[backups[-1].name] == ["daily 2026-03-01", "weekly 2026-W09",
                                           "newest verified"]


def test_several_backups_a_day_keep_the_newest_of_each_day():
    morning = nightly(3)
    evening = nightly(3, at=START + timedelta(hours=10))
    plan = plan_retention(morning + evening, keep_daily=2, keep_weekly=0)
    assert sorted(plan.keep) == sorted(c.name for c in evening[-2:])


def test_days_are_those_of_the_schedule_timezone():
    # 2026-01-02 05:00 UTC is still the evening of January 1st in Los Angeles.
    late = Candidate("20260102T050000Z", datetime(2026, 1, 2, 5, tzinfo=UTC), True)
    early = Candidate("20260101T200000Z", datetime(2026, 1, 1, 20, tzinfo=UTC), True)
    utc = plan_retention([late, early], keep_daily=2, keep_weekly=0)
    la = plan_retention([late, early], keep_daily=2, keep_weekly=0,
                        timezone="America/Los_Angeles")
    assert sorted(utc.keep) == ["20260101T200000Z", "20260102T050000Z"]
    assert sorted(la.keep) == ["20260102T050000Z"]


def test_the_newest_verified_backup_is_never_deleted():
    # The last five nights failed verification; retention alone would keep only those.
    backups = nightly(20, verified=lambda i: i < 15)
    plan = plan_retention(backups, keep_daily=3, keep_weekly=0)
    assert backups[14].name in plan.keep
    assert plan.keep[backups[14].name] == ["newest verified"]
    assert sorted(plan.keep) == sorted([backups[14].name] + [c.name for c in backups[-3:]])
    # Nothing verified at all: nothing extra is kept.
    none = plan_retention(nightly(5, verified=lambda i: False), keep_daily=1, keep_weekly=0)
    assert len(none.keep) == 1


def test_prune_over_backup_folders_with_made_up_dates(dagster_home, tmp_path):
    """One real backup, copied into 30 nightly folders with made-up dates (manifest and
    catalog row rewritten); the one of ten days ago is marked failed by a verification."""
    dest = tmp_path / "backups"
    config = dagster_home.home.parent / "config" / "config.yml"
    config.parent.mkdir()
    config.write_text(f"dagpg:\n  backup:\n    directory: {dest}\n    keep_daily: 3\n"
                      "    keep_weekly: 2\n    schedule:\n      timezone: UTC\n")
    real = backup(dest)["name"]
    # Retention reads no clock: only the backups' own times. The last night is a Wednesday, so
    # the newest backup of the week before is that Sunday's, three nights earlier.
    last = datetime(2026, 1, 28, 9, 30, tzinfo=UTC)
    names = []
    with pg.connection(dagster_home.target) as conn:
        for days_ago in range(29, -1, -1):
            when = last - timedelta(days=days_ago)
            name = new_name(when)
            shutil.copytree(dest / real, dest / name)
            manifest = json.loads((dest / name / "manifest.json").read_text())
            manifest.update(name=name, started_at=iso(when), finished_at=iso(when))
            (dest / name / "manifest.json").write_text(json.dumps(manifest))
            catalog.record(conn, manifest, dest / name)
            names.append(name)
        # The newest made-up backup failed its last verification.
        catalog.record_verification(conn, names[-1], False, "SHA-256 differs",
                                    restore_tested=False)
    shutil.rmtree(dest / real)
    with pg.connection(dagster_home.target) as conn:
        catalog.forget(conn, [real])
    (dest / ".partial-20200101T000000Z").mkdir()  # left by a killed backup

    dry = run_cli("backups", "prune", "--dry-run", "--json")
    assert dry.exit_code == 0, dry.stderr
    planned = json.loads(dry.stdout)
    assert backup_names(dest) == sorted(names + [".partial-20200101T000000Z"])  # untouched

    result = run_cli("backups", "prune", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["deleted"] == planned["deleted"]
    kept = {k["name"]: k["reasons"] for k in report["kept"]}
    # The last 3 days, the newest of the last 2 ISO weeks, and the newest *verified* backup
    # (the newest of all failed its verification).
    assert kept == {
        names[-1]: ["daily 2026-01-28", "weekly 2026-W05"],
        names[-2]: ["daily 2026-01-27", "newest verified"],
        names[-3]: ["daily 2026-01-26"],
        names[-4]: ["weekly 2026-W04"],
    }
    assert report["deleted"] == names[:-4]
    assert backup_names(dest) == sorted(kept)
    assert report["leftovers_removed"] == [".partial-20200101T000000Z"]
    rows = {b.name for b in catalog.all_backups(dagster_home.resolve())}
    assert rows == set(kept)


def test_prune_human_output(dagster_home, tmp_path):
    config = dagster_home.home.parent / "config" / "config.yml"
    config.parent.mkdir()
    config.write_text("dagpg:\n  backup:\n    schedule:\n      timezone: UTC\n")
    dest = tmp_path / "b"
    name = backup(dest)["name"]
    result = run_cli("backups", "prune", "--dir", str(dest))
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [
        f"keep    {name}  (daily {name[:4]}-{name[4:6]}-{name[6:8]}, "
        f"weekly {_iso_week(name)}, newest verified)",
        f"1 kept, 0 deleted in {dest}",
    ]


def _iso_week(name: str) -> str:
    year, week, _ = datetime.strptime(name[:8], "%Y%m%d").isocalendar()
    return f"{year}-W{week:02d}"
