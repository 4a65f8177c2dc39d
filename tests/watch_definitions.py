"""Definitions for the keeper's end-to-end tests (tests/test_watch_e2e.py): a job that naps for
as long as it is told (in pool `keeper_pool`), a schedule that fires every minute while the
file $WATCH_TEST_MARKER exists, and a run-failure sensor that leaves a file named after each
failed run in $WATCH_TEST_SENSOR_DIR. Loaded by dagster-webserver/daemon, not by pytest.
"""

import os
import time
from pathlib import Path

import dagster as dg


@dg.op(config_schema={"seconds": float}, pool="keeper_pool")
def nap(context) -> float:
    time.sleep(context.op_config["seconds"])
    return context.op_config["seconds"]


@dg.job(executor_def=dg.in_process_executor)
def nap_job():
    nap()


@dg.schedule(job=nap_job, cron_schedule="* * * * *",
             default_status=dg.DefaultScheduleStatus.RUNNING)
def every_minute(context):
    marker = os.environ.get("WATCH_TEST_MARKER")
    if not marker or not Path(marker).exists():
        return dg.SkipReason("no marker file")
    return dg.RunRequest(run_config={"ops": {"nap": {"config": {"seconds": 0.1}}}})


@dg.run_failure_sensor(default_status=dg.DefaultSensorStatus.RUNNING,
                       minimum_interval_seconds=5)
def failures_seen(context: dg.RunFailureSensorContext):
    folder = os.environ.get("WATCH_TEST_SENSOR_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / context.dagster_run.run_id).write_text(context.failure_event.message or "")


defs = dg.Definitions(jobs=[nap_job], schedules=[every_minute], sensors=[failures_seen])
