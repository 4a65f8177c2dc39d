"""The ArcPy backend against a recording fake of the arcpy calls it makes.

ArcPy cannot run on this machine (it ships only with ArcGIS Pro on Windows). The fake below
records every geoprocessing call and emulates just enough of each tool to let the backend run
end to end: tables of rows in memory, layers with selections, Statistics computed in Python,
and a per-row `_dist_m` standing in for the geometry SelectLayerByLocation and Near would
measure. These tests show which tools the backend calls with which arguments and that it reads
their results correctly; they cannot show that ArcGIS itself behaves as the fake does.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import statistics
import subprocess
import sys
import types
from pathlib import Path

import pytest

from arcpy_orchestration import park_access
from arcpy_orchestration.errors import (
    BackendUnavailableError,
    DatasetNotFoundError,
    FieldNotFoundError,
    WorkingCrsError,
)

PROJECT_DIR = Path(__file__).resolve().parents[1]


# ---- the fake ---------------------------------------------------------------------------

class FakeSR:
    KNOWN = {
        4326: ("GCS_WGS_1984", "Geographic", 4326, None, None),
        4269: ("GCS_North_American_1983", "Geographic", 4269, None, None),
        26910: ("NAD_1983_UTM_Zone_10N", "Projected", 4269, "Meter", 1.0),
        2269: ("NAD_1983_StatePlane_Oregon_North_FIPS_3601_Feet_Intl", "Projected", 4269,
               "Foot", 0.3048),
    }

    def __init__(self, wkid=None):
        if wkid not in self.KNOWN:
            raise RuntimeError("ERROR 999999: Something unexpected caused the tool to fail.")
        self.name, self.type, gcs, self.linearUnitName, self.metersPerUnit = self.KNOWN[wkid]
        self.factoryCode = wkid
        self.angularUnitName = "Degree"
        self.GCS = types.SimpleNamespace(factoryCode=gcs)


class Table:
    def __init__(self, fields, rows, sr=None, problems=()):
        self.fields = dict(fields)  # name -> arcpy field type
        self.rows = [dict(r) for r in rows]
        self.sr = sr
        self.problems = list(problems)  # (feature_id, problem) CheckGeometry will report


class Layer:
    def __init__(self, dataset):
        self.dataset = dataset
        self.selected = None  # row indexes, or None: no selection


class Result(list):
    pass


class FakeArcpy(types.ModuleType):
    """`arcpy` with the calls the backend makes. `calls` lists (tool, args) in order."""

    def __init__(self, data: dict[str, Table]):
        super().__init__("arcpy")
        self.__spec__ = importlib.machinery.ModuleSpec("arcpy", None)
        self.data = dict(data)
        self.calls: list[tuple] = []
        self.env = types.SimpleNamespace(overwriteOutput=False, workspace=None)
        self.SpatialReference = FakeSR
        self.management = types.SimpleNamespace(**{n: self._tool(n, f) for n, f in {
            "Project": self._project, "CheckGeometry": self._check_geometry,
            "RepairGeometry": None, "Delete": self._delete, "GetCount": self._get_count,
            "CopyFeatures": self._copy, "AddField": self._add_field,
            "CalculateField": self._calculate_field, "MakeFeatureLayer": self._make_layer,
            "SelectLayerByLocation": self._select_by_location, "CreateFileGDB": None,
        }.items()})
        self.analysis = types.SimpleNamespace(Statistics=self._tool("Statistics", self._stats),
                                              Near=self._tool("Near", self._near))
        self.da = types.SimpleNamespace(SearchCursor=self._cursor, Walk=self._walk)

    def _tool(self, name, impl):
        def call(*args):
            self.calls.append((name, args))
            return impl(*args) if impl else Result([args[0]])
        return call

    def tools(self) -> list[str]:
        return [name for name, _ in self.calls]

    def args(self, tool: str) -> list[tuple]:
        return [args for name, args in self.calls if name == tool]

    # -- describing data
    def Exists(self, path):  # noqa: N802 (arcpy's names)
        return any(p == path or p.startswith(path.rstrip("/") + "/") for p in self.data)

    def ListFields(self, path):  # noqa: N802
        table = self.data[path]
        fields = [("OBJECTID", "OID"), ("Shape", "Geometry"), *table.fields.items()]
        return [types.SimpleNamespace(name=n, type=t) for n, t in fields]

    def Describe(self, path):  # noqa: N802
        return types.SimpleNamespace(spatialReference=self.data[path].sr)

    def ListTransformations(self, sr_in, sr_out):  # noqa: N802
        self.calls.append(("ListTransformations", (sr_in.factoryCode, sr_out.factoryCode)))
        return ["WGS_1984_(ITRF00)_To_NAD_1983"]

    def _walk(self, container, datatype=None):
        prefix = container.rstrip("/") + "/"
        yield container, [], [p[len(prefix):] for p in self.data if p.startswith(prefix)]

    def _cursor(self, source, fields):
        rows = self._rows(source)
        return _Cursor([tuple(r.get(f) for f in fields) for r in rows])

    def _rows(self, source):
        if isinstance(source, Layer):
            rows = self.data[source.dataset].rows
            return rows if source.selected is None else [rows[i] for i in source.selected]
        return self.data[source].rows

    # -- tools
    def _project(self, src, dst, sr, transform):
        table = self.data[src]
        self.data[dst] = Table(table.fields, table.rows, sr, table.problems)
        return Result([dst])

    def _check_geometry(self, features, out_table, method):
        problems = self.data[features].problems
        self.data[out_table] = Table({}, [{"FEATURE_ID": f, "PROBLEM": p} for f, p in problems])
        return Result([out_table])

    def _delete(self, target):
        if isinstance(target, str):
            self.data.pop(target, None)
        return Result([True])

    def _get_count(self, source):
        return Result([str(len(self._rows(source)))])

    def _copy(self, src, dst):
        table = self.data[src]
        self.data[dst] = Table(table.fields, table.rows, table.sr)
        return Result([dst])

    def _add_field(self, dataset, name, field_type):
        self.data[dataset].fields[name] = {"SHORT": "SmallInteger"}.get(field_type, field_type)
        for row in self.data[dataset].rows:
            row[name] = None
        return Result([dataset])

    def _calculate_field(self, target, field, expression, expression_type):
        for row in self._rows(target):
            row[field] = int(expression)
        return Result([target])

    def _make_layer(self, dataset, name):
        return Result([Layer(dataset)])

    def _select_by_location(self, layer, relation, selecting, distance, selection_type):
        value, unit = distance.split()
        assert (relation, unit, selection_type) == ("WITHIN_A_DISTANCE", "Meters",
                                                    "NEW_SELECTION")
        rows = self.data[layer.dataset].rows
        layer.selected = [i for i, r in enumerate(rows)
                          if r["_dist_m"] is not None and r["_dist_m"] <= float(value)]
        return Result([layer, layer.dataset, str(len(layer.selected))])

    def _near(self, features, near_features, radius, location, angle, method, names, unit):
        (source, target), = names
        for row in self.data[features].rows:
            row[target] = -1 if row["_dist_m"] is None else row["_dist_m"]
        self.data[features].fields[target] = "Double"
        return Result([features])

    def _stats(self, table, out, stat_fields, case):
        case = case or []
        groups: dict[tuple, list] = {}
        for row in self.data[table].rows:
            groups.setdefault(tuple(row[c] for c in case), []).append(row)
        rows = []
        for key, members in groups.items():
            out_row = dict(zip(case, key, strict=True))
            out_row["FREQUENCY"] = len(members)
            for field, stat in stat_fields:
                values = [m[field] for m in members if m[field] is not None]
                out_row[f"{stat}_{field}"] = {
                    "COUNT": len(values), "SUM": sum(values) if values else None,
                    "MEAN": statistics.fmean(values) if values else None,
                    "MEDIAN": statistics.median(values) if values else None}[stat]
            rows.append(out_row)
        self.data[out] = Table({}, rows)
        return Result([out])


class _Cursor:
    def __init__(self, rows):
        self._rows = rows

    def __enter__(self):
        return iter(self._rows)

    def __exit__(self, *exc):
        return False


# ---- a small city as the fake holds it ------------------------------------------------

WS = "/data/work"
GDB = "/data/city.gdb"
PARCEL_FIELDS = {"parcel_id": "Integer", "district": "String", "assessed_value": "Double"}
# parcel_id, district, assessed_value, distance to the nearest park in metres
PARCELS = [
    (1, "North", 100.0, 0.0),
    (2, "North", 200.0, 800.0),
    (3, "North", None, 800.01),
    (4, "South", 400.0, 50.0),
    (5, "South", 500.0, 2500.0),
    (6, None, 600.0, 10.0),
]


def city(sr=None) -> dict[str, Table]:
    sr = sr or FakeSR(4326)
    rows = [{"parcel_id": p, "district": d, "assessed_value": v, "_dist_m": m}
            for p, d, v, m in PARCELS]
    return {
        f"{GDB}/parcels": Table(PARCEL_FIELDS, rows, sr, problems=[]),
        f"{GDB}/parks": Table({"name": "String"}, [{"name": "A"}, {"name": "B"}], sr,
                              problems=[(2, "self intersections"), (2, "self intersections")]),
    }


@pytest.fixture
def fake(monkeypatch):
    arcpy = FakeArcpy(city())
    monkeypatch.setitem(sys.modules, "arcpy", arcpy)
    monkeypatch.delitem(sys.modules, "arcpy_orchestration.gis.arcpy_backend", raising=False)
    yield arcpy
    sys.modules.pop("arcpy_orchestration.gis.arcpy_backend", None)


def settings(tmp_path, **changes) -> park_access.Settings:
    values = dict(parks_fc=f"{GDB}/parks", parcels_fc=f"{GDB}/parcels", working_wkid=26910,
                  walk_distance_m=800.0, workspace=WS,
                  output_summary_path=str(tmp_path / "summary.xlsx"), backend="arcpy")
    values.update(changes)
    return park_access.Settings(**values)


# ---- tests ----------------------------------------------------------------------------------

def test_whole_pipeline_calls_the_geoprocessing_tools_in_order(fake, tmp_path):
    result = park_access.run(settings(tmp_path))

    out = f"{WS}/park_access.gdb"
    assert fake.tools() == [
        "CreateFileGDB", "ListTransformations", "Project", "CheckGeometry", "Delete",
        "RepairGeometry", "GetCount",  # parks: one invalid geometry, repaired
        "ListTransformations", "Project", "CheckGeometry", "Delete", "GetCount",  # parcels
        "CopyFeatures", "AddField", "CalculateField", "MakeFeatureLayer",
        "SelectLayerByLocation", "GetCount", "CalculateField", "Delete", "Near", "GetCount",
        "Statistics", "Delete", "Statistics", "Delete", "Statistics", "Delete",
        "Statistics", "Delete", "GetCount",
    ]
    assert fake.args("CreateFileGDB") == [(f"{WS}", "park_access.gdb")]
    project = fake.args("Project")
    assert [(a[0], a[1], a[2].factoryCode, a[3]) for a in project] == [
        (f"{GDB}/parks", f"{out}/parks_projected", 26910, "WGS_1984_(ITRF00)_To_NAD_1983"),
        (f"{GDB}/parcels", f"{out}/parcels_projected", 26910, "WGS_1984_(ITRF00)_To_NAD_1983"),
    ]
    assert fake.args("RepairGeometry") == [(f"{out}/parks_projected", "KEEP_NULL", "OGC")]
    layer, relation, parks, distance, how = fake.args("SelectLayerByLocation")[0]
    assert (relation, parks, distance, how) == (
        "WITHIN_A_DISTANCE", f"{out}/parks_projected", "800.0 Meters", "NEW_SELECTION")
    assert fake.args("Near")[0][1:] == (f"{out}/parks_projected", None, "NO_LOCATION",
                                        "NO_ANGLE", "PLANAR", [["NEAR_DIST", "park_dist_m"]],
                                        "Meters")
    stats = fake.args("Statistics")
    assert [s[2] for s in stats] == [[["assessed_value", s] for s in
                                      ("COUNT", "SUM", "MEAN", "MEDIAN")]] * 4
    assert [s[3] for s in stats] == [["district", "near_park"], ["near_park"], ["district"],
                                     None]
    assert result.detail_in_workbook and result.parcels == 6


def test_selection_flags_only_the_selected_parcels(fake, tmp_path):
    s = settings(tmp_path)
    projected = park_access.project_inputs(s)
    assert (projected.parks.repaired, projected.parcels.repaired) == (1, 0)
    selection = park_access.parcels_near_parks(s, projected.parks.path, projected.parcels.path)
    assert (selection.parcels, selection.near) == (6, 4)
    rows = fake.data[selection.path].rows
    assert [(r["parcel_id"], r["near_park"]) for r in rows] == [
        (1, 1), (2, 1), (3, 0), (4, 1), (5, 0), (6, 1)]


def test_summary_is_read_from_the_statistics_tables(fake, tmp_path):
    s = settings(tmp_path)
    projected = park_access.project_inputs(s)
    selection = park_access.parcels_near_parks(s, projected.parks.path, projected.parcels.path)
    summary = park_access.parcel_summary(s, selection.path).summary

    o = summary.overall
    assert (o.all.parcels, o.near.parcels, o.not_near.parcels) == (6, 4, 2)
    assert (o.near.total, o.not_near.total, o.all.nulls, o.not_near.nulls) == (
        1300.0, 500.0, 1, 1)
    assert o.near.median == 300.0 and o.all.median == 400.0
    assert o.share_parcels_near == pytest.approx(4 / 6)
    assert o.share_value_near == pytest.approx(1300 / 1800)
    north, south, none = summary.districts
    assert (north.area, north.near.parcels, north.not_near.parcels, north.all.nulls) == (
        "North", 2, 1, 1)
    assert north.not_near.mean is None and north.not_near.total == 0.0
    assert (south.near.total, south.not_near.total) == (400.0, 500.0)
    assert (none.area, none.near.parcels) == ("(no district)", 1)


def test_detail_rows_turn_nears_minus_one_into_blanks(fake, tmp_path, monkeypatch):
    fake.data[f"{GDB}/parcels"].rows[4]["_dist_m"] = None  # Near finds nothing: -1
    s = settings(tmp_path, detail_row_cap=2)
    result = park_access.run(s)
    assert not result.detail_in_workbook
    lines = Path(result.detail_path).read_text().splitlines()
    assert lines[0] == "parcel_id,district,assessed_value,near_park,park_dist_m"
    assert lines[3] == "3,North,,0,800.01"
    assert lines[5] == "5,South,500.0,0,"


def test_feet_crs_keeps_the_distance_in_metres_for_arcgis_to_convert(fake, tmp_path):
    s = settings(tmp_path, working_wkid=2269)
    projected = park_access.project_inputs(s)
    selection = park_access.parcels_near_parks(s, projected.parks.path, projected.parcels.path)
    assert fake.args("SelectLayerByLocation")[0][3] == "800.0 Meters"
    assert selection.distance_units == pytest.approx(800 / 0.3048)


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
from tests.test_arcpy_backend import FakeArcpy, city, settings
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
