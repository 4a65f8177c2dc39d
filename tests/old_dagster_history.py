"""Run by an OLDER Dagster (a second virtual environment, see tests/old_dagster.py): write a real
history into the PostgreSQL instance at $DAGSTER_HOME, the way a server running that release
would have. Imports only Dagster (whatever version is installed), never dagpg.

Writes: runs of an unpartitioned asset with an asset check, materializations of three daily
partitions, and a schedule started and evaluated by Dagster's own scheduler code for a few cron
times (real ticks, each submitting a run). Prints a JSON summary on stdout.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys

import dagster as dg

DAYS = dg.DailyPartitionsDefinition(start_date="2026-01-01")


@dg.asset(partitions_def=DAYS)
def daily_counts(context) -> int:
    context.log.info(f"counting {context.partition_key}")
    return len(context.partition_key)


@dg.asset
def station_list() -> list[str]:
    print("stations loaded")  # lands in the compute logs
    return ["north", "south"]


@dg.asset_check(asset=station_list)
def stations_not_empty(station_list: list[str]) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=bool(station_list), metadata={"n": len(station_list)})


stations_job = dg.define_asset_job("stations_job", selection=[station_list])
every_minute = dg.ScheduleDefinition(name="stations_every_minute", job=stations_job,
                                     cron_schedule="* * * * *")

defs = dg.Definitions(assets=[daily_counts, station_list], asset_checks=[stations_not_empty],
                      jobs=[stations_job], schedules=[every_minute])


def main() -> None:
    instance = dg.DagsterInstance.get()
    runs = []
    for _ in range(2):
        result = dg.materialize([station_list, stations_not_empty], instance=instance)
        assert result.success
        runs.append(result.run_id)
    for day in ("2026-01-01", "2026-01-02", "2026-01-03"):
        result = dg.materialize([daily_counts], instance=instance, partition_key=day)
        assert result.success
        runs.append(result.run_id)
    ticks = _schedule_ticks(instance)
    print(json.dumps({"dagster": dg.__version__, "runs": runs, "ticks": ticks}))
    instance.dispose()


def _schedule_ticks(instance) -> int:
    """Start the schedule and let Dagster's scheduler evaluate the next three cron times (as
    its daemon would over three minutes): real ticks, each submitting a run."""
    from dagster._core.scheduler.instigation import InstigatorType
    from dagster._core.test_utils import create_test_daemon_workspace_context
    from dagster._core.workspace.load_target import PythonFileTarget
    from dagster._scheduler.scheduler import launch_scheduled_runs

    target = PythonFileTarget(python_file=os.path.abspath(__file__), attribute="defs",
                              working_directory=None, location_name="old_dagster_history")
    with create_test_daemon_workspace_context(target, instance) as context:
        location = next(iter(context.create_request_context().get_code_location_entries()
                             .values())).code_location
        repo = next(iter(location.get_repositories().values()))
        schedule = repo.get_schedule("stations_every_minute")
        instance.start_schedule(schedule)
        logger = logging.getLogger("old_dagster_history")
        now = datetime.datetime.now(datetime.UTC)
        for minutes in (1, 2, 3):  # an unpartitioned schedule ticks for the latest time only
            end = now + datetime.timedelta(minutes=minutes)
            list(launch_scheduled_runs(context, logger, end, iteration_times={}))
        state = instance.get_instigator_state(schedule.get_remote_origin_id(),
                                              schedule.selector_id)
        assert state.instigator_type == InstigatorType.SCHEDULE
        return len(instance.get_ticks(schedule.get_remote_origin_id(), schedule.selector_id))


if __name__ == "__main__":
    sys.exit(main())
