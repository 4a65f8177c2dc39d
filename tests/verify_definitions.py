"""Definitions for `dagpg verify`'s integration tests: the schedules verify expects (running by
default) plus one that stays stopped. Loaded by dagster-webserver/daemon, not collected by pytest.
"""

import dagster as dg


@dg.asset
def verify_probe() -> int:
    return 1


probe_job = dg.define_asset_job("verify_probe_job", selection=[verify_probe])


def _schedule(name: str, status: dg.DefaultScheduleStatus) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(name=name, job=probe_job, cron_schedule="0 0 1 1 *",
                                 default_status=status)


defs = dg.Definitions(
    assets=[verify_probe],
    jobs=[probe_job],
    schedules=[
        _schedule("park_access_daily", dg.DefaultScheduleStatus.RUNNING),
        _schedule("instance_backup_nightly", dg.DefaultScheduleStatus.RUNNING),
        _schedule("verify_stopped_schedule", dg.DefaultScheduleStatus.STOPPED),
    ],
)
