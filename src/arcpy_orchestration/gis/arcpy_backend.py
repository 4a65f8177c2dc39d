"""The ArcPy backend: the same steps with ArcGIS Pro's geoprocessing tools.

Project (with a datum transformation when the geographic coordinate systems differ),
CheckGeometry + RepairGeometry, SelectLayerByLocation WITHIN_A_DISTANCE (ArcGIS converts
"800 Meters" to the layer's unit itself), Near for the distance column, Statistics for the
summary. Imported only when selected; needs no geopandas. ArcPy cannot run on Linux, so this
module is tested against a recording fake of these calls (tests/test_arcpy_backend.py), never
against ArcGIS itself.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import arcpy

from arcpy_orchestration import datasets
from arcpy_orchestration.errors import InputError
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
from arcpy_orchestration.summary import GroupStats, Stats, district_label
from arcpy_orchestration.wording import count as counted

log = logging.getLogger(__name__)

WORKSPACE_GDB = "park_access.gdb"  # created in a plain-folder workspace
NUMERIC_TYPES = {"SmallInteger", "Integer", "BigInteger", "Single", "Double"}
TEXT_TYPES = {"String"}
SKIP_TYPES = {"OID", "Geometry"}
STATISTICS = ("COUNT", "SUM", "MEAN", "MEDIAN")


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
        except RuntimeError:  # ERROR 999999: "Invalid input" for an unknown WKID
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
        _ensure_gdb(dst)
        sr_in = arcpy.Describe(src).spatialReference
        if sr_in.name == "Unknown":
            raise InputError(f"{src}: has no coordinate system, so it cannot be projected; "
                             "define its projection (Define Projection) and re-run")
        sr_out = arcpy.SpatialReference(crs.wkid)
        transform = ""
        if sr_in.GCS.factoryCode != sr_out.GCS.factoryCode:
            choices = arcpy.ListTransformations(sr_in, sr_out)
            transform = choices[0] if choices else ""
        log.info("projecting %s from %s to %s%s", src, sr_in.name, sr_out.name,
                 f" with {transform}" if transform else "")
        arcpy.management.Project(src, dst, sr_out, transform)
        check = r"memory\park_access_geometry_check"
        arcpy.management.CheckGeometry(dst, check, "OGC")
        problems: dict[int, str] = {}
        with arcpy.da.SearchCursor(check, ["FEATURE_ID", "PROBLEM"]) as rows:
            for feature_id, problem in rows:
                problems.setdefault(feature_id, problem)
        arcpy.management.Delete(check)
        empty = sum(1 for p in problems.values() if p == "null geometry")
        repaired = len(problems) - empty
        if repaired:
            # Esri's repair keeps both halves of a bow-tie as one multipart polygon.
            arcpy.management.RepairGeometry(dst, "KEEP_NULL", "OGC")
            log.warning("%s: repaired %s (RepairGeometry, OGC)", src,
                        counted(repaired, "invalid geometry"))
        return ProjectedLayer(dst, _count(dst), repaired, empty)

    def select_near(self, parks: str, parcels: str, dst: str, distance_m: float,
                    crs: CrsInfo) -> Selection:
        _ensure_gdb(dst)
        arcpy.management.CopyFeatures(parcels, dst)
        arcpy.management.AddField(dst, NEAR_FIELD, "SHORT")
        arcpy.management.CalculateField(dst, NEAR_FIELD, "0", "PYTHON3")
        layer = arcpy.management.MakeFeatureLayer(dst, "park_access_parcels")[0]
        try:
            arcpy.management.SelectLayerByLocation(layer, "WITHIN_A_DISTANCE", parks,
                                                   f"{distance_m} Meters", "NEW_SELECTION")
            near = _count(layer)
            arcpy.management.CalculateField(layer, NEAR_FIELD, "1", "PYTHON3")  # selected only
        finally:
            arcpy.management.Delete(layer)
        arcpy.analysis.Near(dst, parks, None, "NO_LOCATION", "NO_ANGLE", "PLANAR",
                            [["NEAR_DIST", DIST_FIELD]], "Meters")
        parcels_count = _count(dst)
        return Selection(dst, parcels_count, near, distance_m / crs.metres_per_unit)

    def group_statistics(self, parcels_near: str, value_field: str,
                         district_field: str) -> list[GroupStats]:
        stats = [[value_field, s] for s in STATISTICS]
        names = ["FREQUENCY", *(f"{s}_{value_field}" for s in STATISTICS)]
        groups: list[GroupStats] = []
        for i, case in enumerate(([district_field, NEAR_FIELD], [NEAR_FIELD],
                                  [district_field], [])):
            out = rf"memory\park_access_stats_{i}"
            arcpy.analysis.Statistics(parcels_near, out, stats, case or None)
            with arcpy.da.SearchCursor(out, [*names, *case]) as rows:
                for frequency, count, total, mean, median, *keys in rows:
                    district = district_label(keys[0]) if district_field in case else None
                    cls = ("near" if keys[-1] == 1 else "not_near") if NEAR_FIELD in case \
                        else "all"
                    groups.append(GroupStats(district, cls, Stats(
                        int(frequency), int(count or 0), float(total or 0.0),
                        None if mean is None else float(mean),
                        None if median is None else float(median))))
            arcpy.management.Delete(out)
        return groups

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
        finally:
            tmp.unlink(missing_ok=True)
        return n


def _rows(dataset: str, fields: list[str]) -> Iterator[tuple]:
    dist = fields.index(DIST_FIELD) if DIST_FIELD in fields else -1
    with arcpy.da.SearchCursor(dataset, fields) as rows:
        for row in rows:
            if dist >= 0 and row[dist] is not None and row[dist] < 0:  # Near: -1 = none found
                row = (*row[:dist], None, *row[dist + 1:])
            yield tuple(row)


def _count(dataset) -> int:
    return int(arcpy.management.GetCount(dataset)[0])


def _ensure_gdb(dataset: str) -> None:
    """Create the output's File Geodatabase when it does not exist yet."""
    ref = datasets.parse(dataset)
    if ref.kind == "gdb" and not arcpy.Exists(str(ref.container)):
        ref.container.parent.mkdir(parents=True, exist_ok=True)
        arcpy.management.CreateFileGDB(str(ref.container.parent), ref.container.name)
