"""The code location behind the SQLite fixture of tests/test_migrate*.py (see sqlite_fixtures.py).

Everything a history can hold: assets (one a multi_asset), an asset check, static and dynamic
partitions, a failing job, a pool with a concurrency limit, a schedule, an asset sensor (its
cursor is an event storage id) and a run-status sensor (its cursor holds a storage id too).
"""

import dagster as dg

DISTRICTS = dg.StaticPartitionsDefinition(["north", "south", "east"])
UPLOADS = dg.DynamicPartitionsDefinition(name="uploads")
POOL = "gis_db"


@dg.asset
def parks() -> int:
    return 3


@dg.multi_asset(specs=[dg.AssetSpec("parcels", deps=["parks"]), dg.AssetSpec("roads")])
def city():
    yield dg.MaterializeResult(asset_key="parcels", metadata={"rows": 120})
    yield dg.MaterializeResult(asset_key="roads", metadata={"rows": 40})


@dg.asset_check(asset="parks")
def parks_not_empty() -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=True, metadata={"count": 3})


@dg.asset(partitions_def=DISTRICTS, pool=POOL)
def districts(context: dg.AssetExecutionContext) -> str:
    return context.partition_key


@dg.asset(partitions_def=UPLOADS)
def uploads(context: dg.AssetExecutionContext) -> str:
    return context.partition_key


@dg.asset
def scratch() -> int:
    return 0


@dg.op
def explode() -> None:
    raise RuntimeError("boom: this run fails on purpose")


@dg.job
def failing_job() -> None:
    explode()


@dg.op
def note(context: dg.OpExecutionContext) -> None:
    context.log.info("scheduled or sensed")


@dg.job
def note_job() -> None:
    note()


tick_schedule = dg.ScheduleDefinition(
    name="tick_schedule", job=note_job, cron_schedule="* * * * *"
)


@dg.asset_sensor(asset_key=dg.AssetKey("parks"), job=note_job, minimum_interval_seconds=1,
                 default_status=dg.DefaultSensorStatus.RUNNING)
def parks_sensor(context: dg.SensorEvaluationContext, asset_event: dg.EventLogEntry):
    yield dg.RunRequest(run_key=f"parks-{context.cursor}")


@dg.run_status_sensor(run_status=dg.DagsterRunStatus.SUCCESS, minimum_interval_seconds=1,
                      default_status=dg.DefaultSensorStatus.RUNNING)
def success_sensor(context: dg.RunStatusSensorContext):
    context.log.info(f"run {context.dagster_run.run_id} succeeded")


defs = dg.Definitions(
    assets=[parks, city, districts, uploads, scratch],
    asset_checks=[parks_not_empty],
    jobs=[failing_job, note_job],
    schedules=[tick_schedule],
    sensors=[parks_sensor, success_sensor],
)
