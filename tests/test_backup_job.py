"""The nightly step inside Dagster: `instance_backup_job` and `instance_backup_nightly` from
scripts/dagster_definitions.py, executed against a real PostgreSQL-backed instance: a backup,
then the history prune, each a materialization with its metadata."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import dagster as dg

from dagpg.backup import catalog
from tests.conftest import PROJECT_DIR

DEFINITIONS = PROJECT_DIR / "scripts" / "dagster_definitions.py"


def test_instance_backup_job_backs_up_prunes_and_records_metadata(dagster_home, tmp_path):
    dest = tmp_path / "nightly"
    config = dagster_home.home.parent / "config" / "config.yml"  # found through DAGSTER_HOME
    config.parent.mkdir()
    config.write_text(f"dagpg:\n  backup:\n    directory: {dest}\n    schedule:\n"
                      "      cron: '15 2 * * *'\n      timezone: Europe/Paris\n")
    defs = runpy.run_path(str(DEFINITIONS))["defs"]

    schedule = defs.resolve_schedule_def("instance_backup_nightly")
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("15 2 * * *", "Europe/Paris")
    assert schedule.job_name == "instance_backup_job"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING

    instance = dg.DagsterInstance.from_config(str(dagster_home.home))
    try:
        job = defs.resolve_job_def("instance_backup_job")
        result = job.execute_in_process(instance=instance)
        assert result.success
        backup, history = result.asset_materializations_for_node("instance_nightly")
        stored = instance.get_latest_materialization_event(dg.AssetKey("instance_backup"))
        pruned = instance.get_latest_materialization_event(dg.AssetKey("instance_history"))
    finally:
        instance.dispose()

    assert (backup.asset_key, history.asset_key) == (dg.AssetKey("instance_backup"),
                                                     dg.AssetKey("instance_history"))
    materialization = backup
    prune = {k: v.value for k, v in history.metadata.items()}
    assert prune["complete"] is True and prune["skipped"] == ""
    assert prune["runs_deleted"] == prune["events_deleted"] == 0  # a history of one new run
    assert pruned.asset_materialization.metadata["complete"].value is True

    metadata = {k: v.value for k, v in materialization.metadata.items()}
    folder = Path(metadata["path"])
    assert folder.parent == dest and folder.name == metadata["backup"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert metadata["dump_sha256"] == manifest["files"]["dagster.dump"]["sha256"]
    assert metadata["size_bytes"] == sum(f["size"] for f in manifest["files"].values())
    assert 0 < metadata["duration_s"] == manifest["duration_s"]
    assert metadata["runs"] == manifest["row_counts"]["runs"] == 1  # this very run
    assert metadata["pruned"] == 0
    assert stored.asset_materialization.metadata["dump_sha256"].value == metadata["dump_sha256"]
    latest = catalog.latest_backup(dagster_home.resolve())
    assert (latest.name, latest.kind, latest.verified) == (metadata["backup"], "dagster", True)
