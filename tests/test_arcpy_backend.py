"""The ArcPy backend against a recording fake of the arcpy calls it makes (tests/arcpy_fake.py).

The fake follows Esri's documentation of each call, and says where it has to assume. These
tests show which tools the backend calls with which arguments and that it reads their results
correctly; they cannot show that ArcGIS itself behaves as its documentation says.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from arcpy_orchestration import park_access
from arcpy_orchestration.errors import (
    BackendUnavailableError,
    DatasetNotFoundError,
    FieldNotFoundError,
    InputError,
    OutputError,
    WorkingCrsError,
)
from arcpy_orchestration.gis import transformations
from tests.arcpy_fake import GDB, WS, Extent, FakeArcpy, FakeSR, city, settings

PROJECT_DIR = Path(__file__).resolve().parents[1]
ITRF00 = "WGS_1984_(ITRF00)_To_NAD_1983"


@pytest.fixture
def fake(monkeypatch):
    arcpy = FakeArcpy(city())
    monkeypatch.setitem(sys.modules, "arcpy", arcpy)
    monkeypatch.delitem(sys.modules, "arcpy_orchestration.gis.arcpy_backend", raising=False)
    yield arcpy
    sys.modules.pop("arcpy_orchestration.gis.arcpy_backend", None)


def test_whole_pipeline_calls_the_geoprocessing_tools_in_order(fake, tmp_path):
    result = park_access.run(settings(tmp_path))

    out = f"{WS}/park_access.gdb"
    assert fake.tools() == [
        "ListTransformations", "CreateFileGDB", "Project", "CheckGeometry", "Delete",
        "RepairGeometry", "GetCount",  # parks: one invalid geometry, repaired
        "ListTransformations", "Project", "CheckGeometry", "Delete", "GetCount",  # parcels
        "CopyFeatures", "AddField", "CalculateField", "MakeFeatureLayer",
        "SelectLayerByLocation", "GetCount", "CalculateField", "Delete", "Near", "GetCount",
        "GetCount",  # the workbook's parcel sheet
    ]
    assert fake.args("CreateFileGDB") == [{"out_folder_path": WS,
                                           "out_name": "park_access.gdb"}]
    project = fake.args("Project")
    assert [(a["in_dataset"], a["out_dataset"], a["out_coor_system"].factoryCode,
             a["transform_method"]) for a in project] == [
        (f"{GDB}/parks", f"{out}/parks_projected", 26910, ITRF00),
        (f"{GDB}/parcels", f"{out}/parcels_projected", 26910, ITRF00),
    ]
    assert fake.args("RepairGeometry") == [{"in_features": f"{out}/parks_projected",
                                            "delete_null": "KEEP_NULL",
                                            "validation_method": "OGC"}]
    select = fake.args("SelectLayerByLocation")[0]
    assert (select["overlap_type"], select["select_features"], select["search_distance"],
            select["selection_type"]) == ("WITHIN_A_DISTANCE", f"{out}/parks_projected",
                                          "800.0 Meters", "NEW_SELECTION")
    assert fake.args("Near") == [{"in_features": f"{out}/parcels_near_parks",
                                  "near_features": f"{out}/parks_projected",
                                  "method": "PLANAR",
                                  "field_names": [["NEAR_DIST", "park_dist_m"]]}]
    assert result.detail_in_workbook and result.parcels == 6


def test_every_tool_is_called_with_documented_keywords_only(fake, tmp_path):
    """A parameter the oldest supported Pro lacks (Near's distance_unit) fails in the fake."""
    park_access.run(settings(tmp_path))  # every call bound to a documented signature
    assert len(fake.calls) == 23
    with pytest.raises(TypeError):
        fake.analysis.Near(in_features="a", near_features="b", distance_unit="METERS")


# ---- the datum transformation -------------------------------------------------------------

def test_the_transformation_is_chosen_for_the_data_extent(fake, tmp_path):
    park_access.project_inputs(settings(tmp_path))
    listed = fake.args("ListTransformations")
    assert [(a["from_sr"], a["to_sr"], a["extent"]) for a in listed] == [
        (4326, 26910, Extent(-122.75, 45.45, -122.60, 45.55))] * 2
    # Without the extent the fake (like the code before this fix) would have started with the
    # 4 m null transformation: the old `ListTransformations(sr_in, sr_out)[0]`.
    assert fake.ListTransformations(FakeSR(4326), FakeSR(26910))[0] == "NAD_1983_To_WGS_1984_1"


def test_a_pair_both_backends_do_not_share_takes_arcgis_first_for_the_extent(monkeypatch,
                                                                             tmp_path):
    """NAD27 data: not in gis.transformations, so Esri's ranking for the extent decides;
    without the extent the first candidate is Alaska's."""
    arcpy = FakeArcpy(city(sr=FakeSR(4267)))
    monkeypatch.setitem(sys.modules, "arcpy", arcpy)
    monkeypatch.delitem(sys.modules, "arcpy_orchestration.gis.arcpy_backend", raising=False)
    park_access.project_inputs(settings(tmp_path))
    assert {a["transform_method"] for a in arcpy.args("Project")} == {
        "NAD_1927_To_NAD_1983_NADCON"}
    assert arcpy.ListTransformations(FakeSR(4267), FakeSR(26910))[0] == \
        "NAD_1927_To_NAD_1983_AK"


def test_data_no_transformation_covers_is_one_line_and_nothing_is_written(monkeypatch,
                                                                          tmp_path):
    arcpy = FakeArcpy(city(extent=Extent(10.0, 50.0, 10.1, 50.1)))  # Germany, not N. America
    monkeypatch.setitem(sys.modules, "arcpy", arcpy)
    monkeypatch.delitem(sys.modules, "arcpy_orchestration.gis.arcpy_backend", raising=False)
    with pytest.raises(InputError) as err:
        park_access.project_inputs(settings(tmp_path))
    assert str(err.value) == (
        f"{GDB}/parks: ArcGIS knows no datum transformation from GCS_WGS_1984 to "
        "GCS_North_American_1983 that covers the data; set spatial.working_wkid to a "
        "coordinate system on GCS_WGS_1984, or project the data first")
    assert "Project" not in arcpy.tools() and "CreateFileGDB" not in arcpy.tools()


def test_when_the_shared_transformation_does_not_cover_the_data_arcgis_first_is_used(
        fake, tmp_path, caplog):
    fake.transformations = [t for t in fake.transformations if t.name != ITRF00]
    with caplog.at_level(logging.WARNING):
        park_access.project_inputs(settings(tmp_path))
    assert {a["transform_method"] for a in fake.args("Project")} == {"NAD_1983_To_WGS_1984_1"}
    assert f"{ITRF00} does not cover the data; using NAD_1983_To_WGS_1984_1" in caplog.text


def test_both_backends_use_the_same_transformation_for_the_sample_city_pair(fake, tmp_path):
    """The ArcPy backend hands Project the Esri name; the open-source backend runs the same
    operation from PROJ's database (ESRI:108190), not PROJ's default null transformation."""
    import numpy as np
    import pyproj

    from arcpy_orchestration.gis.open_source import transformer_for

    wanted = transformations.preferred(4326, 4269)
    park_access.project_inputs(settings(tmp_path))
    assert {a["transform_method"] for a in fake.args("Project")} == {wanted.esri_name}

    lon, lat = np.meshgrid(np.linspace(-122.75, -122.60, 7), np.linspace(45.45, 45.55, 7))
    lon, lat = lon.ravel(), lat.ravel()
    t = transformer_for(pyproj.CRS(4326), pyproj.CRS(26910), (-122.75, 45.45, -122.60, 45.55))
    assert wanted.esri_name in t.description
    x, y = t.transform(lon, lat)
    # The same operation, spelled out: ESRI:108190's Helmert (lat/lon in and out), then UTM.
    op = pyproj.crs.CoordinateOperation.from_authority(wanted.authority, wanted.code)
    lat2, lon2 = pyproj.Transformer.from_pipeline(op.to_proj4()).transform(lat, lon)
    x2, y2 = pyproj.Transformer.from_crs(4269, 26910, always_xy=True).transform(lon2, lat2)
    assert np.hypot(x - x2, y - y2).max() < 1e-6
    # PROJ's default would be the 4 m null transformation EPSG:1188, 1.28 m away in Portland.
    x0, y0 = pyproj.Transformer.from_crs(4326, 26910, always_xy=True).transform(lon, lat)
    shift = np.hypot(x - x0, y - y0)
    assert 1.2 < shift.min() and shift.max() < 1.4


# ---- reading the tools' results ---------------------------------------------------------

def test_selection_flags_only_the_selected_parcels(fake, tmp_path):
    s = settings(tmp_path)
    projected = park_access.project_inputs(s)
    assert (projected.parks.repaired, projected.parcels.repaired) == (1, 0)
    assert (projected.parks.empty, projected.parcels.empty) == (1, 0)  # "Null geometry"
    selection = park_access.parcels_near_parks(s, projected.parks.path, projected.parcels.path)
    assert (selection.parcels, selection.near) == (6, 4)
    rows = fake.data[selection.path].rows
    assert [(r["parcel_id"], r["near_park"]) for r in rows] == [
        (1, 1), (2, 1), (3, 0), (4, 1), (5, 0), (6, 1)]


def test_null_geometry_is_recognised_whatever_its_case(fake, tmp_path):
    fake.data[f"{GDB}/parks"].problems = [(3, "NULL GEOMETRY"), (4, "null geometry")]
    projected = park_access.project_inputs(settings(tmp_path))
    assert (projected.parks.empty, projected.parks.repaired) == (2, 0)
    assert "RepairGeometry" not in fake.tools()


def test_summary_is_computed_from_a_search_cursor_not_the_statistics_tool(fake, tmp_path):
    """Esri documents that Statistics excludes null values, not how null case values group or
    the MEDIAN of an even count: the backend reads rows and computes the shared definition."""
    s = settings(tmp_path)
    projected = park_access.project_inputs(s)
    selection = park_access.parcels_near_parks(s, projected.parks.path, projected.parcels.path)
    summary = park_access.parcel_summary(s, selection.path).summary
    assert not hasattr(fake.analysis, "Statistics")

    o = summary.overall
    assert (o.all.parcels, o.near.parcels, o.not_near.parcels) == (6, 4, 2)
    assert (o.near.total, o.not_near.total, o.all.nulls, o.not_near.nulls) == (
        1300.0, 500.0, 1, 1)
    assert o.near.median == 300.0 and o.all.median == 400.0  # even count: mean of the middle
    assert o.share_parcels_near == pytest.approx(4 / 6)
    assert o.share_value_near == pytest.approx(1300 / 1800)
    north, south, none = summary.districts
    assert (north.area, north.near.parcels, north.not_near.parcels, north.all.nulls) == (
        "North", 2, 1, 1)
    assert north.not_near.mean is None and north.not_near.total == 0.0
    assert (south.near.total, south.not_near.total) == (400.0, 500.0)
    assert (none.area, none.near.parcels) == ("(no district)", 1)


def test_both_backends_summarise_the_same_rows_alike():
    import numpy as np
    import pandas as pd

    from arcpy_orchestration.gis.open_source import group_statistics
    from arcpy_orchestration.summary import group_statistics_rows

    rng = np.random.default_rng(7)
    n = 2_000
    district = rng.choice(np.array(["A", "B", "", None, 3.0, "C"], dtype=object), n)
    value = rng.normal(1000, 300, n).round(2)
    value[rng.random(n) < 0.05] = np.nan
    near = (rng.random(n) < 0.4).astype("int16")
    frame = pd.DataFrame({"district": district, "near_park": near, "value": value})
    rows = [(d, int(k), None if v != v else float(v)) for d, k, v in
            zip(district, near, value, strict=True)]

    def table(groups):
        return {(g.district, g.cls): g.stats for g in groups}

    mine, theirs = table(group_statistics_rows(rows)), table(group_statistics(frame, "value",
                                                                              "district"))
    assert mine.keys() == theirs.keys() and len(mine) == 5 * 3 + 3  # "" and None: one group
    for key, stats in mine.items():
        other = theirs[key]
        assert (stats.parcels, stats.valued) == (other.parcels, other.valued), key
        for name in ("total", "mean", "median"):
            assert getattr(stats, name) == pytest.approx(getattr(other, name), rel=1e-12), key


def test_detail_rows_turn_nears_minus_one_into_blanks(fake, tmp_path):
    fake.data[f"{GDB}/parcels"].rows[4]["_dist_m"] = None  # Near finds nothing: -1
    s = settings(tmp_path, detail_row_cap=2)
    result = park_access.run(s)
    assert not result.detail_in_workbook
    lines = Path(result.detail_path).read_text().splitlines()
    assert lines[0] == "parcel_id,district,assessed_value,near_park,park_dist_m"
    assert lines[3] == "3,North,,0,800.01"
    assert lines[5] == "5,South,500.0,0,"


def test_feet_crs_converts_near_dist_to_metres(fake, tmp_path):
    """SelectLayerByLocation converts "800 Meters" itself; Near writes feet for a CRS in feet,
    which the backend turns into metres (keeping -1 for "none found")."""
    fake.data[f"{GDB}/parcels"].rows[4]["_dist_m"] = None
    s = settings(tmp_path, working_wkid=2269)
    projected = park_access.project_inputs(s)
    selection = park_access.parcels_near_parks(s, projected.parks.path, projected.parcels.path)
    assert fake.args("SelectLayerByLocation")[0]["search_distance"] == "800.0 Meters"
    assert selection.distance_units == pytest.approx(800 / 0.3048)
    assert fake.args("CalculateField")[-1]["field"] == "park_dist_m"
    dist = {r["parcel_id"]: r["park_dist_m"] for r in fake.data[selection.path].rows}
    assert dist[2] == pytest.approx(800.0) and dist[3] == pytest.approx(800.01)
    assert dist[5] == -1


def test_a_geopackage_workspace_is_created_as_a_geopackage(fake, tmp_path):
    park_access.project_inputs(settings(tmp_path, workspace="/data/work.gpkg"))
    assert fake.args("CreateSQLiteDatabase") == [{"out_database_name": "/data/work.gpkg",
                                                  "spatial_type": "GEOPACKAGE"}]
    assert "CreateFileGDB" not in fake.tools()
    assert [a["out_dataset"] for a in fake.args("Project")] == [
        "/data/work.gpkg/parks_projected", "/data/work.gpkg/parcels_projected"]


# ---- locks and failed tools ----------------------------------------------------------------

def test_an_output_open_in_arcgis_pro_is_one_line_and_left_untouched(fake, tmp_path):
    s = settings(tmp_path)
    park_access.project_inputs(s)
    out = f"{WS}/park_access.gdb/parks_projected"
    before = fake.data[out]
    fake.locks.add(out)
    fake.calls.clear()
    with pytest.raises(OutputError) as err:
        park_access.project_inputs(s)
    assert str(err.value) == (
        f"{out}: cannot replace it, another application holds a lock on it (open in ArcGIS "
        "Pro?); close it there, or remove it from the map, and re-run")
    assert fake.args("TestSchemaLock") == [{"dataset": out}]
    assert "Project" not in fake.tools() and fake.data[out] is before


def test_a_lock_taken_after_the_test_is_reported_the_same_way(fake, tmp_path, monkeypatch):
    s = settings(tmp_path)
    park_access.project_inputs(s)
    out = f"{WS}/park_access.gdb/parks_projected"
    fake.locks.add(out)
    monkeypatch.setattr(fake, "TestSchemaLock", lambda dataset: True)  # the race
    with pytest.raises(OutputError) as err:
        park_access.project_inputs(s)
    assert str(err.value) == (
        f"projecting {GDB}/parks to {out}: ERROR 000464: Cannot get exclusive schema lock.  "
        "Either being edited or in use by another application or service.; close the data in "
        "ArcGIS Pro (or the map that shows it) and re-run")


def test_a_failed_tool_is_one_line_naming_what_was_done(fake, tmp_path, caplog):
    fake.fail["CopyFeatures"] = ("ERROR 000210: Cannot create output /data/work/park_access.gdb"
                                 "/parcels_near_parks\nFailed to execute (CopyFeatures).")
    s = settings(tmp_path)
    projected = park_access.project_inputs(s)
    with caplog.at_level(logging.ERROR), pytest.raises(OutputError) as err:
        park_access.parcels_near_parks(s, projected.parks.path, projected.parcels.path)
    assert str(err.value) == (
        f"flagging the parcels of {projected.parcels.path} near {projected.parks.path} into "
        f"{WS}/park_access.gdb/parcels_near_parks: ERROR 000210: Cannot create output "
        "/data/work/park_access.gdb/parcels_near_parks; the run log holds ArcGIS's messages")
    assert "Failed to execute (CopyFeatures)." in caplog.text


# ---- bad input ------------------------------------------------------------------------------

@pytest.mark.parametrize(("change", "error", "message"), [
    (dict(value_field="value"), FieldNotFoundError,
     f"park_access.value_field 'value' is not a field of {GDB}/parcels (fields there: "
     "parcel_id, district, assessed_value); set park_access.value_field in config/config.yml "
     "to one of them"),
    (dict(value_field="district"), FieldNotFoundError,
     f"park_access.value_field 'district' in {GDB}/parcels is not numeric; the summary needs "
     "numbers: set park_access.value_field to a numeric field (there: parcel_id, "
     "assessed_value)"),
    (dict(parks_fc=f"{GDB}/park"), DatasetNotFoundError,
     f"park_access.parks_fc {GDB}/park: no layer 'park' in {GDB} (layers there: parcels, "
     "parks); set park_access.parks_fc to one of them"),
    (dict(working_wkid=4326), WorkingCrsError,
     "spatial.working_wkid 4326 (GCS_WGS_1984) is geographic, in degrees; distances need a "
     "projected CRS in metres or feet: set a projected WKID such as 26910 in config/config.yml"),
    (dict(working_wkid=999999), WorkingCrsError,
     "spatial.working_wkid 999999 is not a coordinate system known to the arcpy backend (EPSG "
     "or Esri WKID); set a projected WKID such as 26910 (NAD83 / UTM zone 10N) in "
     "config/config.yml"),
])
def test_bad_input_is_one_line_and_nothing_is_written(fake, tmp_path, change, error, message):
    with pytest.raises(error) as err:
        park_access.project_inputs(settings(tmp_path, **change))
    assert str(err.value) == message
    assert "Project" not in fake.tools() and "CreateFileGDB" not in fake.tools()


@pytest.mark.parametrize("raised", [RuntimeError, ValueError])
def test_an_unknown_wkid_whatever_arcpy_raises(fake, tmp_path, monkeypatch, raised):
    """ASSUMPTION: the exception type for an unknown WKID is not documented."""
    monkeypatch.setattr(FakeSR, "unknown_error", raised)
    with pytest.raises(WorkingCrsError):
        park_access.project_inputs(settings(tmp_path, working_wkid=123456))


def test_arcpy_backend_refused_where_arcpy_is_missing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "arcpy", None)  # as if not installed
    with pytest.raises(BackendUnavailableError) as err:
        park_access.project_inputs(settings(tmp_path))
    assert str(err.value) == (
        "gis.backend is arcpy but arcpy does not import here; run in ArcGIS Pro's Python "
        "environment or set gis.backend: open_source in config/config.yml")


def test_arcpy_backend_runs_without_geopandas(tmp_path):
    """In ArcGIS Pro's environment the open-source stack is absent: block it and run."""
    code = f"""
import sys
for name in ("geopandas", "shapely", "pyproj", "pyogrio", "pyarrow", "pandas", "dagster"):
    sys.modules[name] = None
sys.path.insert(0, {str(PROJECT_DIR)!r})
from tests.arcpy_fake import FakeArcpy, city, settings
from pathlib import Path
sys.modules["arcpy"] = FakeArcpy(city())
from arcpy_orchestration import gis, park_access
assert gis.resolve_backend_name("auto") == "arcpy"
result = park_access.run(settings(Path({str(tmp_path)!r}), backend="auto"))
print(result.sheets)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "['Summary', 'Parcels']"


def test_open_source_is_chosen_and_arcpy_never_imported_where_arcpy_is_absent():
    code = """
import sys
from arcpy_orchestration import gis, park_access
assert gis.resolve_backend_name("auto") == "open_source"
backend = gis.get_backend("auto")
import arcpy_orchestration.sample_data, arcpy_orchestration.workbook
print(type(backend).__name__, "arcpy" in sys.modules, "dagster" in sys.modules,
      "dagpg" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["OpenSourceBackend", "False", "False", "False"]


def test_arcpy_is_imported_only_when_its_backend_is_built(tmp_path):
    """Importing arcpy takes seconds in ArcGIS Pro: loading the pipeline (as the Dagster
    definitions do) and choosing the backend must not; building the backend does. A fresh
    interpreter where an `arcpy` module imports (a stub, in the working folder)."""
    (tmp_path / "arcpy.py").write_text("import types\nenv = types.SimpleNamespace()\n")
    code = """
import sys
from arcpy_orchestration import gis, park_access, workbook
def loaded():
    return ["arcpy" in sys.modules, "arcpy_orchestration.gis.arcpy_backend" in sys.modules]
print(loaded(), gis.resolve_backend_name("auto"), loaded())
print(type(gis.get_backend("auto")).__name__, loaded())
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == ["[False, False] arcpy [False, False]",
                                        "ArcpyBackend [True, True]"]
