"""Which datum (geographic) transformation both backends use between two geographic CRSs.

ArcGIS's Project needs one when the input's and the output's geographic coordinate systems
differ. Esri's ListTransformations returns the candidates "sorted by amount of overlap of the
data versus the areas of use", accuracy second, and only those that "span the entire extent"
when the data's extent is passed
(https://pro.arcgis.com/en/pro-app/latest/arcpy/functions/listtransformations.htm); without
the extent the first one may be meant for another region. PROJ, under the open-source backend,
picks its own: for WGS 84 -> NAD83 it takes the 4 m null transformation EPSG:1188, because
operations of the ESRI authority are not considered between two EPSG CRSs.

So that both backends give the same coordinates, each pair listed here names one
transformation, by its Esri name (what arcpy's Project takes) and its code in PROJ's database
(ESRI:108190 is Esri's own WGS_1984_(ITRF00)_To_NAD_1983, accuracy 0.1 m, area of use the
USA). Pairs not listed are left to each backend's own choice for the data's extent, and logged.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Transformation:
    esri_name: str  # as arcpy.ListTransformations returns it and Project takes it
    authority: str  # its code in PROJ's database, for the open-source backend
    code: int
    accuracy_m: float

    @property
    def code_str(self) -> str:
        return f"{self.authority}:{self.code}"


# Keyed by the two geographic CRSs' WKIDs, either direction (Project applies a transformation
# in whichever direction is needed: Esri, "Geographic Transformations" environment).
KNOWN: dict[frozenset[int], Transformation] = {
    frozenset({4326, 4269}): Transformation("WGS_1984_(ITRF00)_To_NAD_1983", "ESRI", 108190,
                                            0.1),
}


def preferred(gcs_from: int | None, gcs_to: int | None) -> Transformation | None:
    """The transformation both backends use between two geographic CRSs (WKIDs), or None when
    they are the same or the pair is not listed."""
    if gcs_from is None or gcs_to is None or gcs_from == gcs_to:
        return None
    return KNOWN.get(frozenset({int(gcs_from), int(gcs_to)}))
