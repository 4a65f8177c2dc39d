"""The ArcPy backend: the same steps with ArcGIS Pro's geoprocessing tools.

Project (with the datum transformation of `gis.transformations`, checked against the ones
ListTransformations gives for the data's extent), CheckGeometry + RepairGeometry,
SelectLayerByLocation WITHIN_A_DISTANCE (ArcGIS converts "800 Meters" to the layer's unit
itself), Near for the distance column. The summary is computed from a SearchCursor with the
open-source backend's definitions, because Esri's Statistics tool documents neither how null
case values group nor MEDIAN of an even count. Imported only when selected; needs no
geopandas. ArcPy cannot run on Linux, so this module is tested against a recording fake of
these calls that follows Esri's documentation (tests/test_arcpy_backend.py), never against
ArcGIS itself.

Every call is written against the oldest supported ArcGIS Pro, 3.3 (the first with Python
3.11): tool parameters by their documented keyword names.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import arcpy

from arcpy_orchestration import datasets
from arcpy_orchestration.errors import InputError, OutputError
from arcpy_orchestration.gis import transformations
from arcpy_orchestration.gis.base import (
    DIST_FIELD,
    NEAR_FIELD,
    NUMBER,
    OTHER,
    TEXT,
    CrsInfo,
    DetailTable,
    ProjectedLayer,
    Selection,
)
from arcpy_orchestration.summary import GroupStats, group_statistics_rows
from arcpy_orchestration.wording import count as counted

log = logging.getLogger(__name__)

WORKSPACE_GDB = "park_access.gdb"  # created in a plain-folder workspace
NUMERIC_TYPES = {"SmallInteger", "Integer", "BigInteger", "Single", "Double"}
TEXT_TYPES = {"String"}
SKIP_TYPES = {"OID", "Geometry"}
# CheckGeometry's PROBLEM for a feature without geometry. Esri lists the problems as "Null
# geometry", "Self intersections", ... ("Tools for checking and repairing geometries",
# pro.arcgis.com/en/pro-app/latest/tool-reference/data-management/checking-and-repairing-
# geometries.htm) and says the table is written in English; compared without case, since the
# documentation's capitalization is all we know of the table's.
NULL_GEOMETRY = "null geometry"
# ERROR 000464 "Cannot get exclusive schema lock. Either being edited or in use by another
# application" (Esri's tool error reference), and the words of the message.
LOCK_MARKERS = ("000464", "schema lock")


class ArcpyBackend:
    name = "arcpy"

    def __init__(self) -> None:
        arcpy.env.overwriteOutput = True

    def output_path(self, workspace: str, name: str) -> str:
        ws = Path(workspace)
        if ws.suffix.lower() in datasets.CONTAINERS:
            return str(ws / name)
        return str(ws / WORKSPACE_GDB / name)

    def working_crs(self, wkid: int) -> CrsInfo | None:
        try:
            sr = arcpy.SpatialReference(wkid)
        except Exception:  # noqa: BLE001  the type raised for an unknown WKID is not documented
            log.debug("arcpy.SpatialReference(%s) failed", wkid, exc_info=True)
            return None
        if sr.type == "Geographic":
            return CrsInfo(wkid, sr.name, True, f"WKID:{wkid}", sr.angularUnitName, 1.0)
        return CrsInfo(wkid, sr.name, False, f"WKID:{wkid}", sr.linearUnitName,
                       float(sr.metersPerUnit))

    def layers(self, ref: datasets.DatasetRef) -> list[str] | None:
        if not arcpy.Exists(str(ref.container)):
            return None
        if ref.kind in ("shp", "parquet"):
            return [ref.container.stem]
        names = []
        for _dirpath, _dirnames, filenames in arcpy.da.Walk(str(ref.container),
                                                            datatype="FeatureClass"):
            names.extend(n.split(".", 1)[1] if n.startswith("main.") else n for n in filenames)
        return names

    def fields(self, path: str) -> dict[str, str]:
        kinds = {}
        for f in arcpy.ListFields(path):
            if f.type in SKIP_TYPES:
                continue
            kinds[f.name] = NUMBER if f.type in NUMERIC_TYPES else (
                TEXT if f.type in TEXT_TYPES else OTHER)
        return kinds

    def project(self, src: str, dst: str, crs: CrsInfo) -> ProjectedLayer:
        desc = arcpy.Describe(src)
        sr_in = desc.spatialReference
        if sr_in.name == "Unknown":
            raise InputError(f"{src}: has no coordinate system, so it cannot be projected; "
                             "define its projection (Define Projection) and re-run")
        sr_out = arcpy.SpatialReference(crs.wkid)
        transform = ""
        if sr_in.GCS.factoryCode != sr_out.GCS.factoryCode:
            transform = _transformation(src, sr_in, sr_out, getattr(desc, "extent", None))
        _ensure_workspace(dst)
        _check_unlocked(dst)
        log.info("projecting %s from %s to %s%s", src, sr_in.name, sr_out.name,
                 f" with {transform}" if transform else "")
        with _geoprocessing(f"projecting {src} to {dst}"):
            arcpy.management.Project(in_dataset=src, out_dataset=dst, out_coor_system=sr_out,
                                     transform_method=transform or None)
            check = r"memory\park_access_geometry_check"
            arcpy.management.CheckGeometry(in_features=dst, out_table=check,
                                           validation_method="OGC")
            problems: dict[int, str] = {}
            with arcpy.da.SearchCursor(check, ["FEATURE_ID", "PROBLEM"]) as rows:
                for feature_id, problem in rows:
                    problems.setdefault(feature_id, problem)
            arcpy.management.Delete(check)
            empty = sum(1 for p in problems.values()
                        if str(p).strip().casefold() == NULL_GEOMETRY)
            repaired = len(problems) - empty
            if repaired:
                # Esri's repair keeps both halves of a bow-tie as one multipart polygon.
                arcpy.management.RepairGeometry(in_features=dst, delete_null="KEEP_NULL",
                                                validation_method="OGC")
                log.warning("%s: repaired %s (RepairGeometry, OGC)", src,
                            counted(repaired, "invalid geometry"))
            return ProjectedLayer(dst, _count(dst), repaired, empty)

    def select_near(self, parks: str, parcels: str, dst: str, distance_m: float,
                    crs: CrsInfo) -> Selection:
        _ensure_workspace(dst)
        _check_unlocked(dst)
        with _geoprocessing(f"flagging the parcels of {parcels} near {parks} into {dst}"):
            arcpy.management.CopyFeatures(in_features=parcels, out_feature_class=dst)
            arcpy.management.AddField(in_table=dst, field_name=NEAR_FIELD, field_type="SHORT")
            arcpy.management.CalculateField(in_table=dst, field=NEAR_FIELD, expression="0",
                                            expression_type="PYTHON3")
            layer = arcpy.management.MakeFeatureLayer(in_features=dst,
                                                      out_layer="park_access_parcels")[0]
            try:
                arcpy.management.SelectLayerByLocation(
                    in_layer=layer, overlap_type="WITHIN_A_DISTANCE", select_features=parks,
                    search_distance=f"{distance_m} Meters", selection_type="NEW_SELECTION")
                near = _count(layer)
                arcpy.management.CalculateField(in_table=layer, field=NEAR_FIELD,
                                                expression="1", expression_type="PYTHON3")
            finally:
                arcpy.management.Delete(layer)
            # NEAR_DIST is "in the linear unit of the input feature's coordinate system" (Near's
            # usage notes, every Pro release); the distance_unit parameter of newer releases
            # is not used, so a CRS in feet is converted here.
            arcpy.analysis.Near(in_features=dst, near_features=parks, method="PLANAR",
                                field_names=[["NEAR_DIST", DIST_FIELD]])
            if crs.metres_per_unit != 1.0:
                arcpy.management.CalculateField(
                    in_table=dst, field=DIST_FIELD,
                    expression=f"-1 if !{DIST_FIELD}! < 0 else !{DIST_FIELD}! * "
                               f"{crs.metres_per_unit!r}",
                    expression_type="PYTHON3")
            parcels_count = _count(dst)
        return Selection(dst, parcels_count, near, distance_m / crs.metres_per_unit)

    def group_statistics(self, parcels_near: str, value_field: str,
                         district_field: str) -> list[GroupStats]:
        # SearchCursor gives None for a null value (arcpy.da.SearchCursor), which is all the
        # shared definition needs.
        with _geoprocessing(f"reading {parcels_near}"), arcpy.da.SearchCursor(
                parcels_near, [district_field, NEAR_FIELD, value_field]) as rows:
            return group_statistics_rows(rows)

    def detail(self, parcels_near: str, fields: list[str]) -> DetailTable:
        return DetailTable(tuple(fields), _count(parcels_near), _rows(parcels_near, fields))

    def write_detail_csv(self, parcels_near: str, fields: list[str], path: str) -> int:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        n = 0
        try:
            with open(tmp, "w", newline="", encoding="utf-8") as fh:
                writer = csv.writer(fh)
                writer.writerow(fields)
                for row in _rows(parcels_near, fields):
                    writer.writerow(["" if v is None else v for v in row])
                    n += 1
            os.replace(tmp, target)
        except PermissionError:
            raise OutputError(f"{target}: cannot replace it (is it open in Excel?); close it "
                              "and re-run") from None
        finally:
            tmp.unlink(missing_ok=True)
        return n


def _transformation(src: str, sr_in, sr_out, extent) -> str:
    """The datum transformation for Project: the one both backends use for this pair when it
    spans the data, else Esri's first for the data's extent."""
    # "The extent needs to be specified in coordinates from the from_sr. When working with
    # data, the extent on a Describe object can be used." (ListTransformations)
    usable = extent is not None and all(
        getattr(extent, side, None) == getattr(extent, side, None)  # NaN: empty dataset
        for side in ("XMin", "YMin", "XMax", "YMax"))
    with _geoprocessing(f"listing datum transformations for {src}"):
        valid = list(arcpy.ListTransformations(sr_in, sr_out, extent) if usable
                     else arcpy.ListTransformations(sr_in, sr_out))
    wanted = transformations.preferred(sr_in.GCS.factoryCode, sr_out.GCS.factoryCode)
    if wanted is not None and wanted.esri_name in valid:
        return wanted.esri_name
    if not valid:
        raise InputError(
            f"{src}: ArcGIS knows no datum transformation from {sr_in.GCS.name} to "
            f"{sr_out.GCS.name} that covers the data; set spatial.working_wkid to a "
            f"coordinate system on {sr_in.GCS.name}, or project the data first")
    if wanted is not None:
        log.warning("%s: %s does not cover the data; using %s, ArcGIS's first for its extent "
                    "(the open-source backend would choose for itself)", src,
                    wanted.esri_name, valid[0])
    return valid[0]


@contextlib.contextmanager
def _geoprocessing(what: str) -> Iterator[None]:
    """A failed geoprocessing tool (arcpy.ExecuteError, "raised whenever a geoprocessing tool
    encounters an error") as one line saying what was being done and what to do."""
    try:
        yield
    except arcpy.ExecuteError as exc:
        messages = (arcpy.GetMessages(2) or str(exc)).strip()
        log.error("%s failed:\n%s", what, messages)
        first = messages.splitlines()[0] if messages else type(exc).__name__
        if any(marker in messages.lower() for marker in LOCK_MARKERS):
            raise OutputError(f"{what}: {first}; close the data in ArcGIS Pro (or the map "
                              "that shows it) and re-run") from None
        raise OutputError(f"{what}: {first}; the run log holds ArcGIS's messages") from None


def _check_unlocked(dataset: str) -> None:
    """An existing output must take a schema lock before it is replaced (Esri: TestSchemaLock,
    and "Rules for working with schema locks": a new dataset can always be created)."""
    if arcpy.Exists(dataset) and not arcpy.TestSchemaLock(dataset):
        raise OutputError(
            f"{dataset}: cannot replace it, another application holds a lock on it (open in "
            "ArcGIS Pro?); close it there, or remove it from the map, and re-run")


def _rows(dataset: str, fields: list[str]) -> Iterator[tuple]:
    dist = fields.index(DIST_FIELD) if DIST_FIELD in fields else -1
    with arcpy.da.SearchCursor(dataset, fields) as rows:
        for row in rows:
            if dist >= 0 and row[dist] is not None and row[dist] < 0:  # Near: -1 = none found
                row = (*row[:dist], None, *row[dist + 1:])
            yield tuple(row)


def _count(dataset) -> int:
    return int(arcpy.management.GetCount(dataset)[0])


def _ensure_workspace(dataset: str) -> None:
    """Create the output's File Geodatabase or GeoPackage when it does not exist yet."""
    ref = datasets.parse(dataset)
    if ref.kind not in ("gdb", "gpkg") or arcpy.Exists(str(ref.container)):
        return
    ref.container.parent.mkdir(parents=True, exist_ok=True)
    with _geoprocessing(f"creating {ref.container}"):
        if ref.kind == "gdb":
            arcpy.management.CreateFileGDB(out_folder_path=str(ref.container.parent),
                                           out_name=ref.container.name)
        else:  # "GEOPACKAGE": the latest GeoPackage version (Create SQLite Database)
            arcpy.management.CreateSQLiteDatabase(out_database_name=str(ref.container),
                                                  spatial_type="GEOPACKAGE")
