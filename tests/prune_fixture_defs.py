"""The code location behind the prune tests' history (see prune_fixture.py).

Daily and static partitions, a multi_asset, an observable source (observations), asset checks
(one that fails), an asset materialized only once, a partition that fails, a job that fails, a
job that logs a lot, a schedule and an asset sensor (its cursor is an event storage id).
Every run carries the tag `fixture/age`, which the fixture uses to make runs old. Backfills run
as one run each, and every run in one process, so that the daemon's part takes seconds.
"""

import dagster as dg

DAILY = dg.DailyPartitionsDefinition(start_date="2024-01-01")
REGIONS = dg.StaticPartitionsDefinition(["north", "south", "east", "west"])
POOL = "gis_db"
AGE_TAG = "fixture/age"


@dg.asset(partitions_def=DAILY, backfill_policy=dg.BackfillPolicy.single_run())
def daily_counts(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    for i in range(5):
        context.log.info(f"counting tile {i} of {', '.join(context.partition_keys)}")
    return dg.MaterializeResult(metadata={"rows": 10})


@dg.asset(partitions_def=REGIONS, pool=POOL, backfill_policy=dg.BackfillPolicy.single_run())
def regions(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    fail = set(context.run.tags.get("fixture/fail", "").split(","))
    if fail & set(context.partition_keys):
        raise RuntimeError(f"regions {sorted(fail)} fail on purpose")
    context.log.info(f"regions {', '.join(context.partition_keys)} done")
    return dg.MaterializeResult(metadata={"regions": len(context.partition_keys)})


@dg.multi_asset(specs=[dg.AssetSpec("parcels"), dg.AssetSpec("roads", deps=["parcels"])])
def city(context: dg.AssetExecutionContext):
    context.log.info("building the city")
    print("city's stdout: a line for the compute logs")
    yield dg.MaterializeResult(asset_key="parcels", metadata={"rows": 120},
                               data_version=dg.DataVersion(context.run.run_id[:8]))
    yield dg.MaterializeResult(asset_key="roads", metadata={"rows": 40})


@dg.asset_check(asset="parcels")
def parcels_positive() -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=True, metadata={"count": 120})


@dg.asset_check(asset="roads")
def roads_named(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    passed = context.run.tags.get("fixture/check") != "fail"
    return dg.AssetCheckResult(passed=passed)


@dg.observable_source_asset
def rainfall(context) -> dg.DataVersion:
    context.log.info("reading the rain gauge")
    return dg.DataVersion(context.run.run_id[:8])


@dg.asset
def legacy_report(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    context.log.info("the one and only legacy report")
    return dg.MaterializeResult(metadata={"pages": 3})


@dg.op
def chatter(context: dg.OpExecutionContext) -> None:
    for i in range(12):
        context.log.info(f"chatter line {i}")


@dg.job
def note_job() -> None:
    chatter()


@dg.op
def explode() -> None:
    raise RuntimeError("boom: this run fails on purpose")


@dg.job
def failing_job() -> None:
    explode()


city_job = dg.define_asset_job("city_job", selection=["parcels", "roads"])
# The check alone, in a run of its own: its execution points at a materialization of another run.
check_job = dg.define_asset_job("check_job", selection=dg.AssetSelection.checks(parcels_positive))

tick_schedule = dg.ScheduleDefinition(
    name="tick_schedule", job=note_job, cron_schedule="* * * * *", tags={AGE_TAG: "old"})


@dg.asset_sensor(asset_key=dg.AssetKey("parcels"), job=note_job, minimum_interval_seconds=1,
                 default_status=dg.DefaultSensorStatus.RUNNING)
def parcels_sensor(context: dg.SensorEvaluationContext, asset_event: dg.EventLogEntry):
    yield dg.RunRequest(run_key=f"parcels-{context.cursor}", tags={AGE_TAG: "old"})


ASSETS = [daily_counts, regions, city, rainfall, legacy_report]
CHECKS = [parcels_positive, roads_named]

defs = dg.Definitions(
    assets=ASSETS,
    asset_checks=CHECKS,
    jobs=[note_job, failing_job, city_job, check_job],
    schedules=[tick_schedule],
    sensors=[parcels_sensor],
    executor=dg.in_process_executor,  # a run is one process: the daemon's runs start faster
)
