"""How far apart the two datum transformations put the sample city, and what it changes.

The ArcPy backend projects WGS 84 data to NAD83 with WGS_1984_(ITRF00)_To_NAD_1983; the
open-source backend now runs the same operation from PROJ's database (ESRI:108190). Before,
it took PROJ's default, the 4 m null transformation EPSG:1188. This prints the distance between
the two results for every vertex of the sample city, and how many parcels' near flags and
distances differ between them.

    .venv/bin/python benchmarks/datum_shift.py --parcels 10000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pyproj
import shapely

from arcpy_orchestration import sample_data
from arcpy_orchestration.gis import proximity
from arcpy_orchestration.gis.open_source import project_array, read, singlepart, transformer_for

WALK_M = 800.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parcels", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        city = sample_data.generate(Path(tmp), parcels=args.parcels, formats=("gpkg",))
        parcels, parks = read(city.layer("parcels", "gpkg")), read(city.layer("parks", "gpkg"))
    target = pyproj.CRS(26910)
    shared = transformer_for(parcels.crs, target, parcels.total_bounds)
    default = pyproj.Transformer.from_crs(parcels.crs, target, always_xy=True)
    print(f"shared : {shared.description}\ndefault: {default.description}")

    result = {}
    for name, t in (("shared", shared), ("default", default)):
        started = time.perf_counter()
        pa = project_array(singlepart(parcels.geometry.values), t)
        pk = project_array(singlepart(parks.geometry.values), t)
        dist = proximity.nearest_distance(pa, pk, WALK_M)
        result[name] = (pa, dist)
        print(f"{name:7}: projected and measured in {time.perf_counter() - started:.2f} s")

    a = shapely.get_coordinates(result["shared"][0])
    b = shapely.get_coordinates(result["default"][0])
    shift = np.hypot(*(a - b).T)
    print(f"vertices {len(shift):,}: shift min {shift.min():.4f} m, median "
          f"{np.median(shift):.4f} m, max {shift.max():.4f} m (dx {np.median(a[:, 0] - b[:, 0]):+.3f}"
          f" m, dy {np.median(a[:, 1] - b[:, 1]):+.3f} m)")
    d1, d0 = result["shared"][1], result["default"][1]
    flags = int(((d1 <= WALK_M) != (d0 <= WALK_M)).sum())
    both = np.isfinite(d1) & np.isfinite(d0)
    print(f"parcels {len(d1):,}: near flags that differ {flags}; distance to the nearest park "
          f"differs by at most {np.abs(d1[both] - d0[both]).max() * 1000:.3f} mm")


if __name__ == "__main__":
    main()
