"""What every GIS backend provides, and the small records they return.

A backend does the geoprocessing; `arcpy_orchestration.park_access` checks inputs, composes
error messages and decides what goes where, the same way for every backend.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from arcpy_orchestration.datasets import DatasetRef
from arcpy_orchestration.summary import GroupStats

NEAR_FIELD = "near_park"  # 1 when the parcel is within walk distance of a park, else 0
DIST_FIELD = "park_dist_m"  # planar distance to the nearest park, metres (null: no park)

NUMBER, TEXT, OTHER = "number", "text", "other"


@dataclass(frozen=True)
class CrsInfo:
    wkid: int
    name: str
    geographic: bool
    code: str  # authority:code, e.g. EPSG:26910 or ESRI:102003
    unit: str  # the axis unit's name, e.g. metre, US survey foot
    metres_per_unit: float


@dataclass(frozen=True)
class ProjectedLayer:
    path: str
    features: int
    repaired: int  # invalid geometries made valid (polygon parts kept)
    empty: int  # null or empty geometries (never near a park)


@dataclass(frozen=True)
class Selection:
    path: str
    parcels: int
    near: int
    distance_units: float  # the walk distance in the working CRS's unit


@dataclass(frozen=True)
class DetailTable:
    columns: tuple[str, ...]
    count: int
    rows: Iterable[tuple]


class Backend(Protocol):
    name: str

    def output_path(self, workspace: str, name: str) -> str: ...

    def working_crs(self, wkid: int) -> CrsInfo | None:
        """The CRS for a WKID (EPSG or Esri), or None when it is unknown."""

    def layers(self, ref: DatasetRef) -> list[str] | None:
        """Layer names in the dataset's container, or None when the container does not exist."""

    def fields(self, path: str) -> dict[str, str]:
        """Attribute fields of a dataset: name -> NUMBER, TEXT or OTHER."""

    def project(self, src: str, dst: str, crs: CrsInfo) -> ProjectedLayer: ...

    def select_near(self, parks: str, parcels: str, dst: str, distance_m: float,
                    crs: CrsInfo) -> Selection:
        """Write the parcels to `dst` with NEAR_FIELD and DIST_FIELD added."""

    def group_statistics(self, parcels_near: str, value_field: str,
                         district_field: str) -> list[GroupStats]: ...

    def detail(self, parcels_near: str, fields: list[str]) -> DetailTable: ...

    def write_detail_csv(self, parcels_near: str, fields: list[str], path: str) -> int: ...
