"""An asset check whose newest execution did not complete (skipped, or still running): Dagster's
asset health then shows the newest *completed* execution, so a prune keeps its run too.

Real Dagster runs on PostgreSQL: an old run that materializes `maybe` and passes its check, a
newer run that materializes it without the check, and the newest run of the check's job, in which
`maybe` yields nothing, so its check is planned and skipped (Dagster resolves it as SKIPPED).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest

from dagpg.prune import prune_history
from dagpg.settings import KitSettings, Retention

PRODUCE = {"value": True}


@dg.asset(output_required=False)
def maybe():
    if PRODUCE["value"]:
        yield dg.Output(1)


@dg.asset_check(asset=maybe)
def maybe_positive() -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=True)


maybe_job = dg.define_asset_job("maybe_job", selection=dg.AssetSelection.assets(maybe))
DEFS = dg.Definitions(assets=[maybe], asset_checks=[maybe_positive], jobs=[maybe_job])
CHECK = maybe_positive.check_key


def _run(instance, *, produce: bool, with_check: bool = True) -> str:
    PRODUCE["value"] = produce
    if with_check:
        result = DEFS.resolve_job_def("maybe_job").execute_in_process(instance=instance)
    else:
        result = dg.materialize([maybe], instance=instance,
                                selection=dg.AssetSelection.assets(maybe).without_checks())
    assert result.success
    return result.run_id


def _shown(instance) -> tuple:
    """The check as Dagster's APIs show it: its summary record and the asset's check health."""
    from dagster._core.definitions.asset_health.asset_check_health import (
        AssetCheckHealthState,
    )
    from dagster._core.loader import LoadingContextForTest

    summary = instance.event_log_storage.get_asset_check_summary_records([CHECK])[CHECK]
    last, completed = summary.last_check_execution_record, \
        summary.last_completed_check_execution_record
    context = LoadingContextForTest(instance)
    health = asyncio.run(AssetCheckHealthState.compute_for_asset_checks({CHECK}, context))
    return ((last.id, last.run_id, last.status.value,
             asyncio.run(last.resolve_status(context)).value),
            (completed.id, completed.run_id) if completed else None,
            sorted(k.to_user_string() for k in health.passing_checks))


@pytest.mark.slow
def test_the_newest_completed_execution_of_a_check_keeps_its_run(dagster_home):
    with dg.DagsterInstance.from_config(str(dagster_home.home)) as instance:
        checked = _run(instance, produce=True)  # materialization + check passed: the old run
        _run(instance, produce=True, with_check=False)  # a newer materialization, no check
        skipped = _run(instance, produce=False)  # the check planned, then skipped
        before = _shown(instance)
        assert before[0][1:] == (skipped, "PLANNED", "SKIPPED")
        assert before[1][1] == checked and before[2] == ["maybe:maybe_positive"]

    settings = KitSettings(retention=Retention(keep_last_runs=1))
    report = prune_history(dagster_home.resolve(), settings, runs_older_than="10m",
                           logs_older_than="10m", force=True,
                           now=datetime.now(UTC) + timedelta(hours=1))
    assert report.complete
    assert report.plan.kept_for_catalog == {
        checked: "newest completed execution of check maybe:maybe_positive"}
    with dg.DagsterInstance.from_config(str(dagster_home.home)) as instance:
        assert _shown(instance) == before
