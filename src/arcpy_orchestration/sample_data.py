"""A deterministic synthetic city (parcels and parks) in WGS84, for demos, tests and benchmarks.

The city is laid out in NAD83 / UTM zone 10N metres (blocks of 2 x 12 lots between streets) and
written in WGS84 degrees, so projecting it is a real step. Parcels carry parcel_id, district
and assessed_value (about 2 % null). Parks cluster (so some districts are well served and others
not), vary from pocket parks to large ones, some are multipart and a few are invalid bow-ties.
The same arguments always give the same city. Needs the open-source GIS stack (the `gis` extra).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from arcpy_orchestration.errors import BackendUnavailableError

log = logging.getLogger(__name__)

LAYOUT_WKID = 26910  # NAD83 / UTM zone 10N: the metres the city is drawn in
OUTPUT_WKID = 4326  # WGS84: what the files hold
ORIGIN = (525_000.0, 5_030_000.0)  # south-west corner, near Portland, Oregon
LOT_W, LOT_D, STREET = 20.0, 35.0, 20.0
LOTS_PER_ROW = 12
DISTRICTS = ("Alder", "Birch", "Cedar", "Dogwood", "Elm", "Fir")
PARCELS_PER_PARK = 200
PARKS_PER_CLUSTER = 40
CLUSTER_SIGMA_M = 350.0
NULL_SHARE = 0.02
DEFAULT_SEED = 20240601
SAMPLE_FOLDER = "data/sample"
FORMATS = ("gdb", "gpkg")


@dataclass(frozen=True)
class SampleCity:
    folder: Path
    parcels: int
    parks: int
    invalid_parks: int
    multipart_parks: int

    @property
    def gdb(self) -> Path:
        return self.folder / "city.gdb"

    @property
    def gpkg(self) -> Path:
        return self.folder / "city.gpkg"

    def layer(self, name: str, fmt: str = "gdb") -> str:
        """A dataset path string as the pipeline takes it, e.g. `.../city.gdb/parcels`."""
        return str((self.gdb if fmt == "gdb" else self.gpkg) / name)


def default_parks(parcels: int) -> int:
    return max(3, parcels // PARCELS_PER_PARK)


def generate(
    folder: str | os.PathLike,
    *,
    parcels: int = 10_000,
    parks: int | None = None,
    seed: int = DEFAULT_SEED,
    parks_per_cluster: int = PARKS_PER_CLUSTER,
    formats: tuple[str, ...] = FORMATS,
    progress: Callable[[str], None] | None = None,
) -> SampleCity:
    """Write city.gdb and/or city.gpkg (layers `parcels` and `parks`) into `folder`.

    Files are written beside the folder first and moved in when complete, so an interrupted
    run never leaves a half-written city behind.
    """
    if parcels < 0:
        raise ValueError("parcels must be >= 0")
    parks = default_parks(parcels) if parks is None else parks
    gpd, _np, _shapely = _gis()
    folder = Path(folder)
    say = progress or (lambda _msg: None)
    say(f"laying out {parcels:,} parcels and {parks:,} parks")
    parcel_frame = make_parcels(parcels, seed=seed)
    park_frame = make_parks(parks, parcels, seed=seed, per_cluster=parks_per_cluster)
    invalid = int((~park_frame.geometry.is_valid).sum())
    multipart = int((park_frame.geometry.geom_type == "MultiPolygon").sum())
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        for fmt in formats:
            target = staging / f"city.{fmt}"
            driver = {"gdb": "OpenFileGDB", "gpkg": "GPKG"}[fmt]
            say(f"writing {target.name}")
            for name, frame in (("parcels", parcel_frame), ("parks", park_frame)):
                frame.to_file(target, layer=name, driver=driver, engine="pyogrio",
                              promote_to_multi=True, use_arrow=True)
        folder.mkdir(parents=True, exist_ok=True)
        for fmt in formats:
            final = folder / f"city.{fmt}"
            if final.is_dir():
                shutil.rmtree(final)
            os.replace(staging / f"city.{fmt}", final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    city = SampleCity(folder, parcels, parks, invalid, multipart)
    log.info("sample city written to %s: %d parcels, %d parks (%d invalid, %d multipart)",
             folder, parcels, parks, invalid, multipart)
    return city


def city_extent(parcels: int) -> tuple[int, int]:
    """Blocks across and blocks down for `parcels` lots, keeping the city roughly square."""
    lots_per_block = 2 * LOTS_PER_ROW
    blocks = max(1, math.ceil(parcels / lots_per_block))
    pitch_x = LOTS_PER_ROW * LOT_W + STREET
    pitch_y = 2 * LOT_D + STREET
    across = max(1, round(math.sqrt(blocks * pitch_y / pitch_x)))
    down = math.ceil(blocks / across)
    return across, down


def make_parcels(n: int, *, seed: int = DEFAULT_SEED):
    """n rectangular lots with parcel_id, district and assessed_value, in WGS84."""
    gpd, np, shapely = _gis()
    rng = np.random.default_rng(seed)
    across, down = city_extent(n)
    i = np.arange(n)
    block, lot = np.divmod(i, 2 * LOTS_PER_ROW)
    row_in_block, col = np.divmod(lot, LOTS_PER_ROW)
    block_y, block_x = np.divmod(block, across)
    x0 = ORIGIN[0] + block_x * (LOTS_PER_ROW * LOT_W + STREET) + col * LOT_W
    y0 = ORIGIN[1] + block_y * (2 * LOT_D + STREET) + row_in_block * LOT_D
    geoms = shapely.box(x0, y0, x0 + LOT_W, y0 + LOT_D)
    # Districts: a 3 x 2 grid over the city.
    width = across * (LOTS_PER_ROW * LOT_W + STREET)
    height = max(1, down) * (2 * LOT_D + STREET)
    dcol = np.minimum(((x0 - ORIGIN[0]) / width * 3).astype(int), 2)
    drow = np.minimum(((y0 - ORIGIN[1]) / height * 2).astype(int), 1)
    district = np.asarray(DISTRICTS, dtype=object)[drow * 3 + dcol]
    value = np.round(rng.lognormal(math.log(420_000), 0.45, n), -2)
    value[rng.random(n) < NULL_SHARE] = np.nan
    frame = gpd.GeoDataFrame(
        {"parcel_id": (i + 1).astype("int32"), "district": district, "assessed_value": value},
        geometry=geoms, crs=LAYOUT_WKID,
    )
    return _to_wgs84(frame)


def make_parks(n: int, parcels: int, *, seed: int = DEFAULT_SEED,
               per_cluster: int = PARKS_PER_CLUSTER):
    """n parks over the city of `parcels` lots, in WGS84: in clusters of about `per_cluster`
    (1: scattered evenly)."""
    gpd, np, shapely = _gis()
    rng = np.random.default_rng(seed + 1)
    across, down = city_extent(parcels)
    width = across * (LOTS_PER_ROW * LOT_W + STREET)
    height = down * (2 * LOT_D + STREET)
    clusters = max(1, round(n / max(1, per_cluster)))
    centres = np.column_stack([rng.uniform(0, width, clusters), rng.uniform(0, height, clusters)])
    if per_cluster > 1:
        pick = rng.integers(0, clusters, n)
        xy = centres[pick] + rng.normal(0, CLUSTER_SIGMA_M, (n, 2))
    else:
        xy = centres
    xy = np.clip(xy, 0, [width, height]) + ORIGIN
    area = np.clip(rng.lognormal(math.log(15_000), 1.0, n), 1_500, 400_000)  # m²: 0.15-40 ha
    aspect = rng.uniform(1.0, 2.5, n)
    round_shape = rng.random(n) < 0.4
    multipart = rng.random(n) < 0.08
    invalid = np.zeros(n, dtype=bool)
    invalid[rng.permutation(n)[: max(1 if n else 0, n // 200)]] = True
    geoms = []
    for k in range(n):
        cx, cy = xy[k]
        w = math.sqrt(area[k] * aspect[k])
        h = area[k] / w
        if invalid[k]:
            geoms.append(_bow_tie(shapely, cx, cy, w, h))
            continue
        if round_shape[k]:
            part = shapely.Point(cx, cy).buffer(math.sqrt(area[k] / math.pi), quad_segs=4)
        else:
            part = shapely.box(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        if multipart[k]:
            dx = 1.5 * w
            other = shapely.affinity.translate(shapely.affinity.scale(part, 0.5, 0.5), dx, 0)
            part = shapely.MultiPolygon([part, other])
        geoms.append(part)
    frame = gpd.GeoDataFrame(
        {"park_id": np.arange(1, n + 1, dtype="int32"),
         "name": [f"Park {k + 1}" for k in range(n)]},
        geometry=gpd.GeoSeries(geoms, crs=LAYOUT_WKID), crs=LAYOUT_WKID,
    )
    return _to_wgs84(frame)


def _bow_tie(shapely, cx: float, cy: float, w: float, h: float):
    """A self-intersecting quadrilateral: a digitising error ArcGIS and GEOS both flag."""
    x0, x1, y0, y1 = cx - w / 2, cx + w / 2, cy - h / 2, cy + h / 2
    return shapely.Polygon([(x0, y0), (x1, y1), (x1, y0), (x0, y1), (x0, y0)])


def _to_wgs84(frame):
    return frame.to_crs(OUTPUT_WKID)


def _gis():
    try:
        import geopandas as gpd
        import numpy as np
        import shapely
        import shapely.affinity  # noqa: F401
    except ImportError as exc:
        raise BackendUnavailableError(
            f"the sample city needs the open-source GIS stack ({exc.name} is missing); "
            "install it with `pip install -e '.[gis]'`"
        ) from None
    return gpd, np, shapely


def ensure_for_config(config, *, progress: Callable[[str], None] | None = None
                      ) -> SampleCity | None:
    """Generate the sample city when config names it (under data/sample/) and it is missing.

    Returns the city generated, or None when there was nothing to do (other inputs configured,
    or the sample city already there).
    """
    from arcpy_orchestration import datasets

    folder = config.resolve(SAMPLE_FOLDER).resolve()
    refs = [datasets.parse(config.resolve(p)) for p in (config.park_access.parks_fc,
                                                        config.park_access.parcels_fc)]
    if not all(ref.container.resolve().parent == folder for ref in refs):
        return None
    if all(ref.exists for ref in refs):
        return None
    return generate(folder, parcels=config.park_access.sample_parcels, progress=progress)
