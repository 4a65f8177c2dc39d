"""park_access_job materialized by Dagster into a PostgreSQL-backed instance (guide §4 and §8)."""

from __future__ import annotations

import dataclasses
import json
import re
import runpy
from pathlib import Path

import dagster as dg
import openpyxl
import pytest
import yaml

from arcpy_orchestration import config as config_module
from arcpy_orchestration import datasets, park_access, sample_data
from arcpy_orchestration.summary import Summary
from dagpg import pg
from tests import pgharness

PROJECT_DIR = Path(__file__).resolve().parents[1]
DEFINITIONS = PROJECT_DIR / "scripts" / "dagster_definitions.py"
KEYS = {"parks_projected", "parcels_projected", "parcels_near_parks", "parcel_summary",
        "summary_excel"}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project folder whose config names a 500-parcel sample city (generated here)."""
    root = tmp_path_factory.mktemp("project")
    data = yaml.safe_load((PROJECT_DIR / "config" / "config.yml").read_text())
    data["park_access"].update(walk_distance_m=150.0, sample_parcels=500)
    path = root / "config" / "config.yml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(data))
    sample_data.ensure_for_config(config_module.load_config(path, "dev"))
    return path


@pytest.fixture
def defs(project, dagster_home, monkeypatch):
    """The definitions as the webserver loads them, reading the project's config; the
    instance's dagster.yaml carries the committed python_logs block."""
    committed = yaml.safe_load((PROJECT_DIR / "dagster_home" / "dagster.yaml").read_text())
    pgharness.write_dagster_home(dagster_home.home, dagster_home.target,
                                 extra=yaml.safe_dump({"python_logs": committed["python_logs"]}))
    monkeypatch.setenv("PROJECT_CONFIG", str(project))
    config_module.get_config.cache_clear()
    yield runpy.run_path(str(DEFINITIONS))["defs"]
    config_module.get_config.cache_clear()


def test_definitions_match_the_guide(defs):
    job = defs.resolve_job_def("park_access_job")
    assert {n.name for n in job.nodes} == {"project_inputs", "parcels_near_parks",
                                           "parcel_summary", "summary_excel"}
    schedule = defs.resolve_schedule_def("park_access_daily")
    assert (schedule.cron_schedule, schedule.execution_timezone, schedule.job_name) == (
        "0 0 * * *", "America/Los_Angeles", "park_access_job")
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING  # see the README
    graph = defs.resolve_asset_graph()
    group = {k.to_user_string() for k in graph.get_all_asset_keys()
             if graph.get(k).group_name == "park_access"}
    assert group == KEYS  # other groups (the instance backup) may sit beside it


def test_job_materializes_into_postgres_with_the_pipelines_logs(defs, dagster_home, project):
    instance = dg.DagsterInstance.get()
    result = defs.resolve_job_def("park_access_job").execute_in_process(instance=instance)
    assert result.success

    with pg.connection(dagster_home.target) as conn, conn.cursor() as cur:
        cur.execute("SELECT status FROM runs WHERE run_id = %s", (result.run_id,))
        assert cur.fetchone() == ("SUCCESS",)
        cur.execute("SELECT DISTINCT asset_key FROM event_logs WHERE run_id = %s "
                    "AND dagster_event_type = 'ASSET_MATERIALIZATION'", (result.run_id,))
        assert {json.loads(k)[0] for (k,) in cur.fetchall()} == KEYS

    # A record from a module logger (arcpy_orchestration.gis.open_source), not context.log.
    city = project.parent.parent / "data" / "sample" / "city.gdb"
    messages = [e.user_message for e in instance.all_logs(result.run_id) if not e.is_dagster_event]
    assert (f"projecting {city}/parcels (500 features) from WGS 84 to NAD83 / UTM zone 10N"
            in messages)

    # The workbook holds the logic's numbers, computed here again without Dagster.
    settings = park_access.Settings.from_config(config_module.load_config(project, "dev"))
    assert result.output_for_node("summary_excel") == settings.output_summary_path
    check = dataclasses.replace(settings, workspace=str(project.parent.parent / "check"),
                                output_summary_path=str(project.parent.parent / "check.xlsx"))
    assert park_access.run(check).parcels == 500
    expected = Summary.read_json(datasets.summary_path(check.workspace))
    ws = openpyxl.load_workbook(settings.output_summary_path)["Summary"]
    rows = {ws.cell(r, 1).value: [ws.cell(r, c).value for c in range(2, 15)]
            for r in range(3, 3 + len(expected.areas))}
    def shown(v):  # a mean or median of no values is a dash
        return "–" if v is None else pytest.approx(v)

    for area in expected.areas:
        assert rows[area.area] == [
            area.all.parcels, area.near.parcels, area.not_near.parcels,
            pytest.approx(area.share_parcels_near), area.all.total, area.near.total,
            area.not_near.total, pytest.approx(area.share_value_near),
            shown(area.near.mean), shown(area.not_near.mean),
            shown(area.near.median), shown(area.not_near.median), area.all.nulls]
    overall = expected.overall
    assert 0 < overall.near.parcels < 500 and overall.all.nulls > 0
    assert len(openpyxl.load_workbook(settings.output_summary_path)["Parcels"]["A"]) == 501

    summary_record = instance.get_latest_materialization_event(dg.AssetKey("parcel_summary"))
    metadata = summary_record.asset_materialization.metadata
    assert metadata["share_parcels_near"].value == f"{overall.share_parcels_near:.1%}"  # "34.2%"
    assert "| All parcels | 500 |" in metadata["preview"].value

    # One line per fact in the run's log, counts in words that agree with them.
    assert len([m for m in messages if "within 150 m of a park" in m]) == 1, messages
    assert not [m for m in messages if re.search(
        r"\b1 (invalid geometries|parcels|parks|districts|parcel rows)\b", m)], messages


def test_the_ui_shows_where_each_output_is_and_dagster_stores_none(defs, dagster_home, project):
    """Each asset's `path` (what the UI shows as its location) is the dataset or workbook the
    pipeline wrote, never a pickle under DAGSTER_HOME/storage; a run of the last asset alone
    reads its inputs' paths back from the materializations."""
    instance = dg.DagsterInstance.get()
    job = defs.resolve_job_def("park_access_job")
    assert job.execute_in_process(instance=instance).success
    settings = park_access.Settings.from_config(config_module.load_config(project, "dev"))
    workspace = Path(settings.workspace)
    storage = Path(instance.storage_directory()).resolve()
    paths = {}
    for key in KEYS:
        event = instance.get_latest_materialization_event(dg.AssetKey(key))
        paths[key] = Path(event.asset_materialization.metadata["path"].value)
        assert storage not in paths[key].parents, (key, paths[key])
        assert not (storage / key).exists(), key
    assert paths["summary_excel"] == Path(settings.output_summary_path)
    assert paths["parcel_summary"] == Path(datasets.summary_path(settings.workspace))
    for key in ("parks_projected", "parcels_projected", "parcels_near_parks"):
        assert paths[key].parent == workspace and paths[key].name.startswith(key), paths[key]
        assert paths[key].exists()

    workbook = Path(settings.output_summary_path)
    before = workbook.stat().st_mtime_ns
    alone = job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey(
        "summary_excel")])
    assert alone.success and alone.output_for_node("summary_excel") == str(workbook)
    assert workbook.stat().st_mtime_ns > before

    # Never materialized: the run fails with a line saying what to do.
    fresh = job.execute_in_process(instance=dg.DagsterInstance.ephemeral(), raise_on_error=False,
                                   asset_selection=[dg.AssetKey("summary_excel")])
    failure = next(e for e in fresh.all_events if e.is_step_failure)
    assert "has never been materialized, so there is no path to read; materialize it (or all " \
           "of park_access_job) first" in failure.step_failure_data.error.to_string()
