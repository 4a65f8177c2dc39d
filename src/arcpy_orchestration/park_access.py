"""The park-access pipeline: which parcels are within walking distance of a park, and what that
means per district. Four steps, each a plain function of dataset paths (strings) that the Dagster
assets in scripts/dagster_definitions.py call one to one:

    project_inputs -> parcels_near_parks -> parcel_summary -> summary_excel

"Within walk distance" is planar edge-to-edge distance <= walk_distance_m in the projected
working CRS (ArcGIS's SelectLayerByLocation WITHIN_A_DISTANCE); a parcel inside a park counts,
a parcel near several parks counts once. Inputs are checked before anything is written, and each
problem is one line naming the setting to change.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from arcpy_orchestration import datasets, gis, workbook
from arcpy_orchestration.errors import (
    DatasetNotFoundError,
    DistanceError,
    FieldNotFoundError,
    WorkingCrsError,
)
from arcpy_orchestration.gis.base import (
    DIST_FIELD,
    NEAR_FIELD,
    NUMBER,
    Backend,
    CrsInfo,
    ProjectedLayer,
    Selection,
)
from arcpy_orchestration.summary import Summary, assemble
from arcpy_orchestration.wording import count as counted

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    """What the pipeline needs from config/config.yml, paths made absolute."""

    parks_fc: str
    parcels_fc: str
    working_wkid: int
    walk_distance_m: float
    workspace: str
    output_summary_path: str
    id_field: str = "parcel_id"
    value_field: str = "assessed_value"
    district_field: str = "district"
    detail_row_cap: int = 100_000
    backend: str = "auto"
    paper: str = "letter"  # the workbook's page size: letter or a4
    value_format: str = workbook.DEFAULT_VALUE_FORMAT  # Excel number format of value columns

    @classmethod
    def from_config(cls, config) -> Settings:
        pa = config.park_access
        return cls(
            parks_fc=str(config.resolve(pa.parks_fc)),
            parcels_fc=str(config.resolve(pa.parcels_fc)),
            working_wkid=config.spatial.working_wkid,
            walk_distance_m=pa.walk_distance_m,
            workspace=str(config.resolve(pa.workspace)),
            output_summary_path=str(config.resolve(pa.output_summary_path)),
            id_field=pa.id_field,
            value_field=pa.value_field,
            district_field=pa.district_field,
            detail_row_cap=pa.detail_row_cap,
            backend=config.gis.backend,
            paper=pa.workbook.paper,
            value_format=pa.workbook.value_format,
        )


@dataclass(frozen=True)
class ProjectedInputs:
    parks: ProjectedLayer
    parcels: ProjectedLayer
    crs: CrsInfo
    backend: str


@dataclass(frozen=True)
class SummaryResult:
    path: str
    summary: Summary


@dataclass(frozen=True)
class WorkbookResult:
    path: str
    parcels: int
    detail_in_workbook: bool
    detail_path: str | None = None  # the parcel-level CSV when it did not fit the workbook
    sheets: list[str] = field(default_factory=list)


def project_inputs(settings: Settings, *, backend: Backend | None = None) -> ProjectedInputs:
    """Check the inputs and the working CRS, then project both layers into the workspace,
    repairing invalid geometries."""
    be = backend or gis.get_backend(settings.backend)
    crs = check_working_crs(be, settings.working_wkid)
    check_dataset(be, settings.parks_fc, "park_access.parks_fc")
    check_dataset(be, settings.parcels_fc, "park_access.parcels_fc", fields={
        "park_access.id_field": settings.id_field,
        "park_access.value_field": settings.value_field,
        "park_access.district_field": settings.district_field,
    }, numeric="park_access.value_field")
    log.info("projecting parks and parcels to %s (WKID %d) with the %s backend",
             crs.name, crs.wkid, be.name)
    parks = be.project(settings.parks_fc, be.output_path(settings.workspace, "parks_projected"),
                       crs)
    parcels = be.project(settings.parcels_fc,
                         be.output_path(settings.workspace, "parcels_projected"), crs)
    log.info("projected %s and %s; %s repaired", counted(parks.features, "park"),
             counted(parcels.features, "parcel"),
             counted(parks.repaired + parcels.repaired, "invalid geometry"))
    return ProjectedInputs(parks, parcels, crs, be.name)


def parcels_near_parks(settings: Settings, parks_projected: str, parcels_projected: str,
                       *, backend: Backend | None = None) -> Selection:
    """The parcels with `near_park` (1 within walk distance of any park, else 0) and
    `park_dist_m` (distance to the nearest park) added."""
    check_distance(settings.walk_distance_m)
    be = backend or gis.get_backend(settings.backend)
    crs = check_working_crs(be, settings.working_wkid)
    dst = be.output_path(settings.workspace, "parcels_near_parks")
    selection = be.select_near(parks_projected, parcels_projected, dst,
                               settings.walk_distance_m, crs)
    share = selection.near / selection.parcels if selection.parcels else 0.0
    log.info("%s of %s (%.1f%%) within %g m of a park", f"{selection.near:,}",
             counted(selection.parcels, "parcel"), 100 * share, settings.walk_distance_m)
    return selection


def parcel_summary(settings: Settings, parcels_near: str, *, backend: Backend | None = None,
                   notes: dict | None = None) -> SummaryResult:
    """Counts and value statistics, near vs not near, overall and per district, written as
    JSON beside the workspace."""
    be = backend or gis.get_backend(settings.backend)
    check_dataset(be, parcels_near, "parcels_near_parks", fields={
        "park_access.value_field": settings.value_field,
        "park_access.district_field": settings.district_field,
    }, numeric="park_access.value_field")
    if NEAR_FIELD not in be.fields(parcels_near):
        raise FieldNotFoundError(
            f"{parcels_near}: has no {NEAR_FIELD} field; pass the output of parcels_near_parks",
            dataset=parcels_near, field=NEAR_FIELD, available=[])
    notes = {"backend": be.name, "working_wkid": settings.working_wkid,
             "parks": settings.parks_fc, "parcels": settings.parcels_fc, **(notes or {})}
    groups = be.group_statistics(parcels_near, settings.value_field, settings.district_field)
    summary = assemble(groups, walk_distance_m=settings.walk_distance_m,
                       value_field=settings.value_field, district_field=settings.district_field,
                       parcels=parcels_near, notes=notes)
    path = summary.write_json(datasets.summary_path(settings.workspace))
    overall = summary.overall
    log.info("summary of %s in %s written to %s: %.1f%% near a park, %.1f%% of %s near, "
             "%s without a value", counted(overall.all.parcels, "parcel"),
             counted(len(summary.districts), "district"), path, 100 * overall.share_parcels_near,
             100 * overall.share_value_near, settings.value_field, f"{overall.all.nulls:,}")
    return SummaryResult(str(path), summary)


def summary_excel(settings: Settings, summary_json: str, parcels_near: str,
                  *, backend: Backend | None = None) -> WorkbookResult:
    """The analyst's workbook: a Summary sheet, and a parcel-level sheet while the parcel count
    is within `detail_row_cap`; past it the parcel table is a CSV beside the workbook."""
    be = backend or gis.get_backend(settings.backend)
    summary = Summary.read_json(summary_json)
    fields = [settings.id_field, settings.district_field, settings.value_field, NEAR_FIELD,
              DIST_FIELD]
    out = Path(settings.output_summary_path)
    parcels = summary.overall.all.parcels
    if parcels <= settings.detail_row_cap:
        detail = be.detail(parcels_near, fields)
        sheets = workbook.write_workbook(out, summary, detail=detail, paper=settings.paper,
                                         value_format=settings.value_format)
        log.info("workbook written to %s with %s", out, counted(parcels, "parcel row"))
        return WorkbookResult(str(out), parcels, True, None, sheets)
    csv_path = datasets.detail_csv_path(out)
    be.write_detail_csv(parcels_near, fields, str(csv_path))
    sheets = workbook.write_workbook(out, summary, detail=None, detail_path=csv_path,
                                     detail_row_cap=settings.detail_row_cap,
                                     paper=settings.paper, value_format=settings.value_format)
    log.info("workbook written to %s; %s (over the cap of %s) written to %s",
             out, counted(parcels, "parcel row"), f"{settings.detail_row_cap:,}", csv_path)
    return WorkbookResult(str(out), parcels, False, str(csv_path), sheets)


def run(settings: Settings, *, backend: Backend | None = None) -> WorkbookResult:
    """All four steps in order, as the job runs them (for notebooks and benchmarks)."""
    be = backend or gis.get_backend(settings.backend)
    projected = project_inputs(settings, backend=be)
    selection = parcels_near_parks(settings, projected.parks.path, projected.parcels.path,
                                   backend=be)
    summary = parcel_summary(settings, selection.path, backend=be)
    return summary_excel(settings, summary.path, selection.path, backend=be)


# ---- checks: each failure is one line saying what is wrong and what to set ----

def check_working_crs(be: Backend, wkid: int) -> CrsInfo:
    crs = be.working_crs(wkid)
    if crs is None:
        raise WorkingCrsError(
            f"spatial.working_wkid {wkid} is not a coordinate system known to the {be.name} "
            "backend (EPSG or Esri WKID); set a projected WKID such as 26910 "
            "(NAD83 / UTM zone 10N) in config/config.yml", wkid=wkid)
    if crs.geographic:
        raise WorkingCrsError(
            f"spatial.working_wkid {wkid} ({crs.name}) is geographic, in degrees; distances "
            "need a projected CRS in metres or feet: set a projected WKID such as 26910 "
            "in config/config.yml", wkid=wkid)
    return crs


def check_distance(distance_m: float) -> None:
    if not distance_m > 0:  # also catches NaN
        raise DistanceError(
            f"park_access.walk_distance_m is {distance_m:g}; it must be a distance in metres "
            "greater than 0: set it in config/config.yml", distance=distance_m)


def check_dataset(be: Backend, path: str, key: str, *, fields: dict[str, str] | None = None,
                  numeric: str | None = None) -> None:
    """The dataset exists and has the named fields (`fields` maps a setting to a field name)."""
    ref = datasets.parse(path)
    layers = be.layers(ref)
    if layers is None:
        raise DatasetNotFoundError(
            f"{key} {path}: {ref.container} does not exist; check the path in "
            "config/config.yml", dataset=path)
    if ref.layer is None and len(layers) > 1:
        raise DatasetNotFoundError(
            f"{key} {path}: names no layer and {ref.container.name} has several "
            f"({', '.join(layers)}); name one, e.g. {ref.container}/{layers[0]}",
            dataset=path, available=layers)
    if ref.layer is not None and ref.layer not in layers:
        raise DatasetNotFoundError(
            f"{key} {path}: no layer {ref.layer!r} in {ref.container} (layers there: "
            f"{', '.join(layers) or 'none'}); set {key} to one of them",
            dataset=path, available=layers)
    if not fields:
        return
    found = be.fields(path)
    for setting, name in fields.items():
        if name not in found:
            raise FieldNotFoundError(
                f"{setting} {name!r} is not a field of {path} (fields there: "
                f"{', '.join(found) or 'none'}); set {setting} in config/config.yml to one of "
                "them", dataset=path, field=name, available=list(found))
    if numeric and found[fields[numeric]] != NUMBER:
        name = fields[numeric]
        numbers = [n for n, kind in found.items() if kind == NUMBER]
        raise FieldNotFoundError(
            f"{numeric} {name!r} in {path} is not numeric; the summary needs numbers: set "
            f"{numeric} to a numeric field (there: {', '.join(numbers) or 'none'})",
            dataset=path, field=name, available=numbers)
