"""A recording fake of the arcpy calls the ArcPy backend makes, following Esri's documentation.

ArcPy cannot run on this machine (it ships only with ArcGIS Pro on Windows). The fake records
every call and emulates just enough of each tool to let the backend run end to end: tables of
rows in memory, layers with selections, and a per-row `_dist_m` standing in for the geometry
SelectLayerByLocation and Near would measure.

What it takes from Esri's documentation (ArcGIS Pro 3.3 tool and function reference):
- each tool accepts exactly its documented parameter names, by position or keyword; anything
  else is a TypeError (so a parameter a release lacks fails here, not on the server);
- ListTransformations(from_sr, to_sr, {extent}, ...): with an extent, "only transformations
  that span the entire extent will be returned", sorted by overlap then accuracy;
- CheckGeometry's PROBLEM values as Esri lists them ("Null geometry", "Self intersections");
- Near writes NEAR_DIST "in the linear unit of the input feature's coordinate system", -1 when
  nothing is found;
- a tool that fails raises arcpy.ExecuteError and GetMessages(2) returns its error messages; a
  dataset another application holds takes no schema lock (TestSchemaLock returns False) and a
  tool replacing it fails with ERROR 000464;
- SearchCursor returns None for a null value.

What stays an assumption (each marked ASSUMPTION below): the order of ListTransformations'
result without an extent, what "overlap" ranks when every returned transformation spans the
whole extent (we rank by accuracy), the areas of use (taken from PROJ's copy of the EPSG and
Esri registries), the exception type for an unknown WKID, and the exact capitalization of
CheckGeometry's table beyond the documentation's list.
"""

from __future__ import annotations

import importlib.machinery
import inspect
import types
from dataclasses import dataclass

from arcpy_orchestration import park_access

LOCK_ERROR = ("ERROR 000464: Cannot get exclusive schema lock.  Either being edited or in use "
              "by another application or service.\nFailed to execute ({tool}).")


class ExecuteError(Exception):
    """arcpy.ExecuteError: "raised whenever a geoprocessing tool encounters an error"."""


class FakeSR:
    # wkid: (name, type, GCS wkid, GCS name, linear unit, metres per unit)
    KNOWN = {
        4326: ("GCS_WGS_1984", "Geographic", 4326, "GCS_WGS_1984", None, None),
        4269: ("GCS_North_American_1983", "Geographic", 4269, "GCS_North_American_1983",
               None, None),
        4267: ("GCS_North_American_1927", "Geographic", 4267, "GCS_North_American_1927",
               None, None),
        26910: ("NAD_1983_UTM_Zone_10N", "Projected", 4269, "GCS_North_American_1983",
                "Meter", 1.0),
        2269: ("NAD_1983_StatePlane_Oregon_North_FIPS_3601_Feet_Intl", "Projected", 4269,
               "GCS_North_American_1983", "Foot", 0.3048),
    }
    # ASSUMPTION: the type of the exception for an unknown WKID is not documented; tests swap
    # it to show the backend does not depend on it.
    unknown_error: type[Exception] = RuntimeError

    def __init__(self, wkid=None):
        if wkid not in self.KNOWN:
            raise self.unknown_error("ERROR 999999: Something unexpected caused the tool to fail.")
        self.name, self.type, gcs, gcs_name, self.linearUnitName, self.metersPerUnit = \
            self.KNOWN[wkid]
        self.factoryCode = wkid
        self.angularUnitName = "Degree"
        self.GCS = types.SimpleNamespace(factoryCode=gcs, name=gcs_name)


@dataclass(frozen=True)
class Extent:
    XMin: float
    YMin: float
    XMax: float
    YMax: float


@dataclass(frozen=True)
class FakeTransformation:
    name: str
    gcs: frozenset[int]
    accuracy_m: float
    area: tuple[float, float, float, float]  # west, south, east, north; west > east: wraps

    def spans(self, e: Extent) -> bool:
        west, south, east, north = self.area
        lon_ok = (west <= e.XMin and e.XMax <= east) if west <= east else (
            (e.XMin >= west or e.XMin <= east) and (e.XMax >= west or e.XMax <= east))
        return lon_ok and south <= e.YMin and e.YMax <= north


# ASSUMPTION: areas of use and accuracies as PROJ 9.5's proj.db holds them (EPSG 1188, 1251,
# 1252, 1241, 1243; ESRI 108190), and Esri's names for the EPSG ones. In registry order, which
# is what the fake returns without an extent (ASSUMPTION: that order is undocumented).
TRANSFORMATIONS = [
    FakeTransformation("NAD_1983_To_WGS_1984_1", frozenset({4269, 4326}), 4.0,
                       (-172.54, 23.81, -47.74, 86.46)),
    FakeTransformation("NAD_1983_To_WGS_1984_2", frozenset({4269, 4326}), 8.0,
                       (172.42, 51.3, -164.84, 54.34)),
    FakeTransformation("NAD_1983_To_WGS_1984_3", frozenset({4269, 4326}), 4.0,
                       (-163.74, 15.56, -151.27, 25.58)),
    FakeTransformation("WGS_1984_(ITRF00)_To_NAD_1983", frozenset({4269, 4326}), 0.1,
                       (167.65, 14.92, -63.88, 74.71)),
    FakeTransformation("NAD_1927_To_NAD_1983_AK", frozenset({4267, 4269}), 0.5,
                       (-172.54, 51.3, -129.99, 71.4)),
    FakeTransformation("NAD_1927_To_NAD_1983_NADCON", frozenset({4267, 4269}), 0.15,
                       (-124.79, 24.41, -66.91, 49.38)),
]

PORTLAND = Extent(-122.75, 45.45, -122.60, 45.55)  # the city, in WGS 84 degrees


class Table:
    def __init__(self, fields, rows, sr=None, problems=(), extent=PORTLAND):
        self.fields = dict(fields)  # name -> arcpy field type
        self.rows = [dict(r) for r in rows]
        self.sr = sr
        self.problems = list(problems)  # (feature_id, problem) CheckGeometry will report
        self.extent = extent


class Layer:
    def __init__(self, dataset):
        self.dataset = dataset
        self.selected = None  # row indexes, or None: no selection


class Result(list):
    pass


class FakeArcpy(types.ModuleType):
    """`arcpy` with the calls the backend makes. `calls` lists (tool, arguments) in order."""

    def __init__(self, data: dict[str, Table]):
        super().__init__("arcpy")
        self.__spec__ = importlib.machinery.ModuleSpec("arcpy", None)
        self.data = dict(data)
        self.calls: list[tuple[str, dict]] = []
        self.locks: set[str] = set()  # datasets another application holds open
        self.fail: dict[str, str] = {}  # tool -> error message it raises
        self.transformations = list(TRANSFORMATIONS)
        self._messages = ""
        self.ExecuteError = ExecuteError
        self.env = types.SimpleNamespace(overwriteOutput=False, workspace=None)
        self.SpatialReference = FakeSR
        self.management = types.SimpleNamespace(**{f.__name__[1:]: self._tool(f) for f in (
            self._Project, self._CheckGeometry, self._RepairGeometry, self._Delete,
            self._GetCount, self._CopyFeatures, self._AddField, self._CalculateField,
            self._MakeFeatureLayer, self._SelectLayerByLocation, self._CreateFileGDB,
            self._CreateSQLiteDatabase)})
        self.analysis = types.SimpleNamespace(Near=self._tool(self._Near))
        self.da = types.SimpleNamespace(SearchCursor=self._cursor, Walk=self._walk)

    # -- recording
    def _tool(self, impl):
        name = impl.__name__[1:]
        signature = inspect.signature(impl)

        def call(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)  # TypeError: not a documented parameter
            self.calls.append((name, dict(bound.arguments)))
            if name in self.fail:
                self._messages = self.fail[name]
                raise ExecuteError(self._messages)
            return impl(*bound.args, **bound.kwargs)
        return call

    def _replace(self, tool, dataset):
        """A tool replacing `dataset` needs its schema lock."""
        if dataset in self.locks:
            self._messages = LOCK_ERROR.format(tool=tool)
            raise ExecuteError(self._messages)

    def tools(self) -> list[str]:
        return [name for name, _ in self.calls]

    def args(self, tool: str) -> list[dict]:
        return [args for name, args in self.calls if name == tool]

    # -- functions
    def GetMessages(self, severity=None):  # noqa: N802 (arcpy's names)
        return self._messages

    def TestSchemaLock(self, dataset):  # noqa: N802
        self.calls.append(("TestSchemaLock", {"dataset": dataset}))
        return dataset not in self.locks

    def Exists(self, path):  # noqa: N802
        return any(p == path or p.startswith(path.rstrip("/") + "/") for p in self.data)

    def ListFields(self, path):  # noqa: N802
        table = self.data[path]
        fields = [("OBJECTID", "OID"), ("Shape", "Geometry"), *table.fields.items()]
        return [types.SimpleNamespace(name=n, type=t) for n, t in fields]

    def Describe(self, path):  # noqa: N802
        table = self.data[path]
        return types.SimpleNamespace(spatialReference=table.sr, extent=table.extent)

    def ListTransformations(self, from_sr, to_sr, extent=None, vertical=False,  # noqa: N802
                            first_only=False):
        self.calls.append(("ListTransformations", {
            "from_sr": from_sr.factoryCode, "to_sr": to_sr.factoryCode, "extent": extent}))
        pair = frozenset({from_sr.GCS.factoryCode, to_sr.GCS.factoryCode})
        found = [t for t in self.transformations if t.gcs == pair]
        if extent is not None:
            # ASSUMPTION: all returned span the whole extent, so overlap ties; accuracy decides.
            found = sorted((t for t in found if t.spans(extent)), key=lambda t: t.accuracy_m)
        names = [t.name for t in found]
        return names[:1] if first_only else names

    def _walk(self, container, datatype=None):
        prefix = container.rstrip("/") + "/"
        yield container, [], [p[len(prefix):] for p in self.data if p.startswith(prefix)]

    def _cursor(self, source, fields):
        return _Cursor([tuple(r.get(f) for f in fields) for r in self._rows(source)])

    def _rows(self, source):
        if isinstance(source, Layer):
            rows = self.data[source.dataset].rows
            return rows if source.selected is None else [rows[i] for i in source.selected]
        return self.data[source].rows

    # -- tools, with their documented parameters (ArcGIS Pro 3.3 tool reference)
    def _Project(self, in_dataset, out_dataset, out_coor_system, transform_method=None,  # noqa: N802
                 in_coor_system=None, preserve_shape=None, max_deviation=None, vertical=None):
        self._replace("Project", out_dataset)
        table = self.data[in_dataset]
        self.data[out_dataset] = Table(table.fields, table.rows, out_coor_system,
                                       table.problems, table.extent)
        return Result([out_dataset])

    def _CheckGeometry(self, in_features, out_table, validation_method=None):  # noqa: N802
        problems = self.data[in_features].problems
        self.data[out_table] = Table({}, [{"FEATURE_ID": f, "PROBLEM": p} for f, p in problems])
        return Result([out_table])

    def _RepairGeometry(self, in_features, delete_null=None, validation_method=None):  # noqa: N802
        return Result([in_features])

    def _Delete(self, in_data, data_type=None):  # noqa: N802
        if isinstance(in_data, str):
            self.data.pop(in_data, None)
        return Result([True])

    def _GetCount(self, in_rows):  # noqa: N802
        return Result([str(len(self._rows(in_rows)))])

    def _CopyFeatures(self, in_features, out_feature_class, config_keyword=None,  # noqa: N802
                      spatial_grid_1=None, spatial_grid_2=None, spatial_grid_3=None):
        self._replace("CopyFeatures", out_feature_class)
        table = self.data[in_features]
        self.data[out_feature_class] = Table(table.fields, table.rows, table.sr,
                                             extent=table.extent)
        return Result([out_feature_class])

    def _AddField(self, in_table, field_name, field_type, field_precision=None,  # noqa: N802
                  field_scale=None, field_length=None, field_alias=None,
                  field_is_nullable=None, field_is_required=None, field_domain=None):
        self.data[in_table].fields[field_name] = {"SHORT": "SmallInteger"}.get(field_type,
                                                                               field_type)
        for row in self.data[in_table].rows:
            row[field_name] = None
        return Result([in_table])

    def _CalculateField(self, in_table, field, expression, expression_type=None,  # noqa: N802
                        code_block=None, field_type=None, enforce_domains=None):
        assert expression_type == "PYTHON3"
        for row in self._rows(in_table):
            code = expression
            for name, value in row.items():
                code = code.replace(f"!{name}!", repr(value))
            row[field] = eval(code)  # a Python 3 expression with !field! references
        return Result([in_table])

    def _MakeFeatureLayer(self, in_features, out_layer, where_clause=None,  # noqa: N802
                          workspace=None, field_info=None):
        return Result([Layer(in_features)])

    def _SelectLayerByLocation(self, in_layer, overlap_type=None,  # noqa: N802
                               select_features=None, search_distance=None,
                               selection_type=None, invert_spatial_relationship=None):
        value, unit = search_distance.split()
        assert (overlap_type, unit, selection_type) == ("WITHIN_A_DISTANCE", "Meters",
                                                        "NEW_SELECTION")
        rows = self.data[in_layer.dataset].rows
        in_layer.selected = [i for i, r in enumerate(rows)
                             if r["_dist_m"] is not None and r["_dist_m"] <= float(value)]
        return Result([in_layer, in_layer.dataset, str(len(in_layer.selected))])

    def _CreateFileGDB(self, out_folder_path, out_name, out_version=None):  # noqa: N802
        return Result([f"{out_folder_path}/{out_name}"])

    def _CreateSQLiteDatabase(self, out_database_name, spatial_type=None):  # noqa: N802
        return Result([out_database_name])

    # ASSUMPTION: Near as documented for every supported release, without the distance_unit
    # parameter of newer ones (its first release is not documented in what we could read).
    def _Near(self, in_features, near_features, search_radius=None, location=None,  # noqa: N802
              angle=None, method=None, field_names=None):
        table = self.data[in_features]
        (source, target), = field_names
        assert source == "NEAR_DIST"
        unit = table.sr.metersPerUnit or 1.0  # NEAR_DIST: the input CRS's linear unit
        for row in table.rows:
            row[target] = -1 if row["_dist_m"] is None else row["_dist_m"] / unit
        table.fields[target] = "Double"
        return Result([in_features])


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


def city(sr=None, extent=PORTLAND) -> dict[str, Table]:
    sr = sr or FakeSR(4326)
    rows = [{"parcel_id": p, "district": d, "assessed_value": v, "_dist_m": m}
            for p, d, v, m in PARCELS]
    return {
        f"{GDB}/parcels": Table(PARCEL_FIELDS, rows, sr, problems=[], extent=extent),
        f"{GDB}/parks": Table({"name": "String"}, [{"name": "A"}, {"name": "B"}], sr,
                              problems=[(2, "Self intersections"), (2, "Self intersections"),
                                        (3, "Null geometry")], extent=extent),
    }


def settings(tmp_path, **changes) -> park_access.Settings:
    values = dict(parks_fc=f"{GDB}/parks", parcels_fc=f"{GDB}/parcels", working_wkid=26910,
                  walk_distance_m=800.0, workspace=WS,
                  output_summary_path=str(tmp_path / "summary.xlsx"), backend="arcpy")
    values.update(changes)
    return park_access.Settings(**values)
