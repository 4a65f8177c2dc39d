"""The pipeline's logic on hand-made geometry with known answers (open-source backend)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pyproj
import pytest
import shapely
import yaml

from arcpy_orchestration import park_access
from arcpy_orchestration.config import load_config
from arcpy_orchestration.errors import (
    ConfigError,
    DatasetNotFoundError,
    DistanceError,
    FieldNotFoundError,
    WorkingCrsError,
)
from arcpy_orchestration.gis.open_source import project_array, read, transformer_for

PROJECT_DIR = Path(__file__).resolve().parents[1]
X0, Y0 = 500_000.0, 5_000_000.0  # NAD83 / UTM 10N metres, near Salem, Oregon
UTM, WGS84, OREGON_NORTH_FT = 26910, 4326, 2269


def box(x0, y0, x1, y1):
    return shapely.box(X0 + x0, Y0 + y0, X0 + x1, Y0 + y1)


PARKS = [box(0, 0, 100, 100), box(0, 300, 100, 400)]
# parcel_id: (geometry, district, assessed_value, distance to the nearest park in metres)
PARCELS = {
    1: (box(10, 10, 20, 20), "North", 100.0, 0.0),  # inside park A
    2: (box(900, 0, 920, 20), "North", 200.0, 800.0),  # exactly at the distance
    3: (box(900.01, 40, 920, 60), "North", 300.0, 800.01),  # just beyond it
    4: (box(40, 150, 60, 250), "South", 400.0, 50.0),  # 50 m from both parks: counted once
    5: (box(5000, 5000, 5020, 5020), "South", 500.0, math.hypot(4900, 4600)),
    6: (box(150, 0, 170, 20), "South", None, 50.0),  # near, no value
    7: (box(3000, 0, 3020, 20), None, 700.0, 2900.0),  # no district
}
NEAR = {1, 2, 4, 6}


def parcel_frame(crs=UTM):
    ids = list(PARCELS)
    frame = gpd.GeoDataFrame({
        "parcel_id": np.array(ids, dtype="int32"),
        "district": [PARCELS[i][1] for i in ids],
        "assessed_value": [PARCELS[i][2] for i in ids],
    }, geometry=[PARCELS[i][0] for i in ids], crs=UTM)
    return frame.to_crs(crs)


def park_frame(geoms=PARKS, crs=UTM):
    return reproject(gpd.GeoDataFrame({"name": [f"park {i}" for i in range(len(geoms))]},
                                      geometry=list(geoms), crs=UTM), crs)


def reproject(frame, crs):
    """`frame` in `crs` with the datum transformation the pipeline projects back with
    (WGS_1984_(ITRF00)_To_NAD_1983 between WGS 84 and NAD83), so a round trip is exact;
    geopandas' default there is the 4 m null transformation, 1.1 m off."""
    t = transformer_for(frame.crs, pyproj.CRS(crs), frame.total_bounds)
    return frame.set_geometry(project_array(frame.geometry.values, t)).set_crs(
        crs, allow_override=True)


def write(frame, path: Path, layer: str | None = None) -> str:
    driver = {".gdb": "OpenFileGDB", ".gpkg": "GPKG", ".shp": "ESRI Shapefile"}[path.suffix]
    path.parent.mkdir(parents=True, exist_ok=True)
    pyogrio.write_dataframe(frame, path, layer=layer, driver=driver, promote_to_multi=True,
                            geometry_type="MultiPolygon")
    return str(path / layer) if layer else str(path)


def make_settings(tmp_path, parks, parcels, **changes) -> park_access.Settings:
    values = dict(parks_fc=parks, parcels_fc=parcels, working_wkid=UTM, walk_distance_m=800.0,
                  workspace=str(tmp_path / "work"),
                  output_summary_path=str(tmp_path / "reports" / "summary.xlsx"),
                  backend="open_source")
    values.update(changes)
    return park_access.Settings(**values)


@pytest.fixture
def city(tmp_path):
    gdb = tmp_path / "city.gdb"
    return make_settings(tmp_path, write(park_frame(), gdb, "parks"),
                         write(parcel_frame(), gdb, "parcels"))


def flagged(selection_path: str):
    frame = read(selection_path, geometry=False)
    return dict(zip(frame.parcel_id, frame.near_park, strict=True)), dict(
        zip(frame.parcel_id, frame.park_dist_m, strict=True))


def steps(settings):
    projected = park_access.project_inputs(settings)
    selection = park_access.parcels_near_parks(settings, projected.parks.path,
                                               projected.parcels.path)
    return projected, selection


def test_near_means_edge_to_edge_distance_at_most_the_walk_distance(city):
    projected, selection = steps(city)
    near, dist = flagged(selection.path)
    assert {pid for pid, flag in near.items() if flag == 1} == NEAR
    assert (selection.parcels, selection.near) == (7, 4)
    for pid, (_geom, _d, _v, expected) in PARCELS.items():
        assert dist[pid] == pytest.approx(expected, abs=1e-6), pid
    assert (projected.parks.features, projected.parcels.features) == (2, 7)
    assert selection.path.endswith("work/parcels_near_parks.parquet")


def test_summary_counts_nulls_and_splits_near_from_not_near(city):
    _projected, selection = steps(city)
    result = park_access.parcel_summary(city, selection.path)
    o = result.summary.overall
    assert (o.all.parcels, o.near.parcels, o.not_near.parcels) == (7, 4, 3)
    assert (o.near.valued, o.near.nulls, o.not_near.nulls) == (3, 1, 0)
    assert (o.near.total, o.near.mean, o.near.median) == (700.0, pytest.approx(700 / 3), 200.0)
    assert (o.not_near.total, o.not_near.mean, o.not_near.median) == (1500.0, 500.0, 500.0)
    assert o.share_parcels_near == pytest.approx(4 / 7)
    assert o.share_value_near == pytest.approx(700 / 2200)
    areas = {a.area: a for a in result.summary.districts}
    assert list(areas) == ["North", "South", "(no district)"]
    assert (areas["North"].near.parcels, areas["North"].not_near.total) == (2, 300.0)
    assert (areas["South"].near.parcels, areas["South"].all.nulls) == (2, 1)
    assert areas["(no district)"].not_near.total == 700.0
    assert Path(result.path) == Path(city.workspace) / "parcel_summary.json"


def test_projection_from_wgs84_lands_on_the_working_grid(tmp_path):
    gpkg = tmp_path / "wgs84.gpkg"
    parcels = {1: box(895, 0, 915, 20), 2: box(905, 40, 925, 60)}  # 795 m and 805 m away
    frame = gpd.GeoDataFrame({"parcel_id": [1, 2], "district": ["A", "A"],
                              "assessed_value": [1.0, 2.0]},
                             geometry=list(parcels.values()), crs=UTM)
    frame = reproject(frame, WGS84)
    settings = make_settings(tmp_path, write(park_frame(crs=WGS84), gpkg, "parks"),
                             write(frame, gpkg, "parcels"))
    projected, selection = steps(settings)
    back = read(projected.parcels.path)
    assert back.crs.to_epsg() == UTM
    assert shapely.get_coordinates(back.geometry.values) == pytest.approx(
        shapely.get_coordinates(np.array(list(parcels.values()))), abs=1e-3)
    near, dist = flagged(selection.path)
    assert near == {1: 1, 2: 0}
    assert dist[1] == pytest.approx(795, abs=1e-3)


def test_feet_crs_converts_the_walk_distance(tmp_path):
    """800 m is 2624.67 ft: passed unconverted, 800 ft would select a third of the parcels."""
    gpkg = tmp_path / "wgs84.gpkg"
    parcels = [box(100 + d, 0, 120 + d, 20) for d in (200, 700, 790, 810, 1200)]
    frame = gpd.GeoDataFrame({"parcel_id": range(1, 6), "district": ["A"] * 5,
                              "assessed_value": [1.0] * 5}, geometry=parcels,
                             crs=UTM).to_crs(WGS84)
    base = make_settings(tmp_path, write(park_frame(crs=WGS84), gpkg, "parks"),
                         write(frame, gpkg, "parcels"))
    results = {}
    for wkid in (UTM, OREGON_NORTH_FT):
        settings = dataclasses.replace(base, working_wkid=wkid, workspace=str(tmp_path / str(wkid)))
        _projected, selection = steps(settings)
        results[wkid] = flagged(selection.path)
        if wkid == OREGON_NORTH_FT:
            assert selection.distance_units == pytest.approx(800 / 0.3048)
    assert results[UTM][0] == results[OREGON_NORTH_FT][0] == {1: 1, 2: 1, 3: 1, 4: 0, 5: 0}
    for pid in range(1, 6):  # distances reported in metres either way (scale factors differ)
        assert results[OREGON_NORTH_FT][1][pid] == pytest.approx(results[UTM][1][pid], rel=1e-3)


def test_invalid_park_is_repaired_keeping_both_halves_of_a_bow_tie(tmp_path):
    bow_tie = shapely.Polygon([(X0, Y0), (X0 + 200, Y0 + 200), (X0 + 200, Y0),
                               (X0, Y0 + 200), (X0, Y0)])
    assert not bow_tie.is_valid and bow_tie.buffer(0).bounds[0] == X0 + 100  # one half lost
    gdb = tmp_path / "city.gdb"
    west = box(-300, 90, -280, 110)  # 280 m from the western triangle, 380 m from the eastern
    frame = gpd.GeoDataFrame({"parcel_id": np.int32([1]), "district": ["A"],
                              "assessed_value": [1.0]}, geometry=[west], crs=UTM)
    settings = make_settings(tmp_path, write(park_frame([bow_tie]), gdb, "parks"),
                             write(frame, gdb, "parcels"), walk_distance_m=300.0)
    projected, selection = steps(settings)
    assert (projected.parks.repaired, projected.parcels.repaired) == (1, 0)
    repaired = read(projected.parks.path).geometry.iloc[0]
    assert repaired.is_valid and repaired.area == pytest.approx(2 * 100 * 200 / 2)
    assert flagged(selection.path)[0] == {1: 1}


@pytest.mark.filterwarnings("ignore:Normalized/laundered field name")
@pytest.mark.parametrize("fmt", ["gdb", "gpkg", "shp"])
@pytest.mark.parametrize("workspace", ["work", "work.gdb", "work.gpkg"])
def test_inputs_and_workspaces_in_every_format(tmp_path, fmt, workspace):
    if fmt == "shp":
        parks = write(park_frame(), tmp_path / "in" / "parks.shp")
        parcels = write(parcel_frame(), tmp_path / "in" / "parcels.shp")
    else:
        parks = write(park_frame(), tmp_path / f"city.{fmt}", "parks")
        parcels = write(parcel_frame(), tmp_path / f"city.{fmt}", "parcels")
    # A Shapefile field name has at most 10 characters: assessed_value arrives as assessed_v.
    value = "assessed_v" if fmt == "shp" else "assessed_value"
    settings = make_settings(tmp_path, parks, parcels, workspace=str(tmp_path / workspace),
                             value_field=value)
    _projected, selection = steps(settings)
    assert {pid for pid, flag in flagged(selection.path)[0].items() if flag == 1} == NEAR
    summary = park_access.parcel_summary(settings, selection.path).summary
    assert summary.overall.near.total == 700.0


def test_empty_parcels_give_an_all_zero_summary_and_a_workbook(tmp_path):
    gdb = tmp_path / "city.gdb"
    empty = parcel_frame().iloc[:0]
    settings = make_settings(tmp_path, write(park_frame(), gdb, "parks"),
                             write(empty, gdb, "parcels"))
    result = park_access.run(settings)
    summary = park_access.parcel_summary(settings, str(Path(settings.workspace) /
                                                      "parcels_near_parks.parquet")).summary
    o = summary.overall
    assert (o.all.parcels, o.all.total, o.share_parcels_near, o.share_value_near) == (0, 0, 0, 0)
    assert (o.near.mean, o.near.median, summary.districts) == (None, None, ())
    assert result.parcels == 0 and Path(result.path).exists()


def test_no_parks_means_no_parcel_is_near(tmp_path):
    gdb = tmp_path / "city.gdb"
    settings = make_settings(tmp_path, write(park_frame([]), gdb, "parks"),
                             write(parcel_frame(), gdb, "parcels"))
    _projected, selection = steps(settings)
    near, dist = flagged(selection.path)
    assert set(near.values()) == {0} and all(np.isnan(list(dist.values())))


def test_parcel_table_goes_beside_the_workbook_past_the_cap(city):
    capped = dataclasses.replace(city, detail_row_cap=6)
    result = park_access.run(capped)
    assert (result.detail_in_workbook, result.sheets) == (False, ["Summary"])
    csv = Path(result.detail_path)
    assert csv == Path(capped.output_summary_path).with_name("summary_parcels.csv")
    lines = csv.read_text().splitlines()
    assert lines[0] == '"parcel_id","district","assessed_value","near_park","park_dist_m"'
    assert len(lines) == 8 and lines[2] == '2,"North",200,1,800'
    within = park_access.run(dataclasses.replace(city, detail_row_cap=7))
    assert (within.detail_in_workbook, within.sheets) == (True, ["Summary", "Parcels"])


# ---- bad input: one line naming what is wrong and what to set; nothing written ----

@pytest.mark.parametrize(("change", "error", "message"), [
    (dict(value_field="value"), FieldNotFoundError,
     "park_access.value_field 'value' is not a field of {parcels} (fields there: parcel_id, "
     "district, assessed_value); set park_access.value_field in config/config.yml to one of "
     "them"),
    (dict(district_field="ward"), FieldNotFoundError,
     "park_access.district_field 'ward' is not a field of {parcels} (fields there: parcel_id, "
     "district, assessed_value); set park_access.district_field in config/config.yml to one "
     "of them"),
    (dict(value_field="district"), FieldNotFoundError,
     "park_access.value_field 'district' in {parcels} is not numeric; the summary needs "
     "numbers: set park_access.value_field to a numeric field (there: parcel_id, "
     "assessed_value)"),
    (dict(parcels_fc="{gdb}/parcel"), DatasetNotFoundError,
     "park_access.parcels_fc {gdb}/parcel: no layer 'parcel' in {gdb} (layers there: parks, "
     "parcels); set park_access.parcels_fc to one of them"),
    (dict(parks_fc="{tmp}/nowhere.gdb/parks"), DatasetNotFoundError,
     "park_access.parks_fc {tmp}/nowhere.gdb/parks: {tmp}/nowhere.gdb does not exist; check "
     "the path in config/config.yml"),
    (dict(parks_fc="{tmp}/parks.csv"), DatasetNotFoundError,
     "{tmp}/parks.csv: not a dataset path the pipeline can read; name a feature class in a "
     "File Geodatabase (city.gdb/parcels), a GeoPackage layer (city.gpkg/parcels), a Shapefile "
     "(.shp) or a GeoParquet file (.parquet)"),
    (dict(working_wkid=4326), WorkingCrsError,
     "spatial.working_wkid 4326 (WGS 84) is geographic, in degrees; distances need a projected "
     "CRS in metres or feet: set a projected WKID such as 26910 in config/config.yml"),
    (dict(working_wkid=999999), WorkingCrsError,
     "spatial.working_wkid 999999 is not a coordinate system known to the open_source backend "
     "(EPSG or Esri WKID); set a projected WKID such as 26910 (NAD83 / UTM zone 10N) in "
     "config/config.yml"),
])
def test_bad_input_stops_before_anything_is_written(city, tmp_path, change, error, message):
    gdb = str(tmp_path / "city.gdb")
    fill = dict(gdb=gdb, tmp=str(tmp_path), parcels=city.parcels_fc)
    change = {k: v.format(**fill) if isinstance(v, str) else v for k, v in change.items()}
    with pytest.raises(error) as err:
        park_access.project_inputs(dataclasses.replace(city, **change))
    assert str(err.value) == message.format(**fill)
    assert not Path(city.workspace).exists()


@pytest.mark.parametrize("distance", [0.0, -5.0])
def test_distance_must_be_positive(city, distance):
    projected = park_access.project_inputs(city)
    with pytest.raises(DistanceError) as err:
        park_access.parcels_near_parks(dataclasses.replace(city, walk_distance_m=distance),
                                       projected.parks.path, projected.parcels.path)
    assert str(err.value) == (
        f"park_access.walk_distance_m is {distance:g}; it must be a distance in metres greater "
        "than 0: set it in config/config.yml")


def test_config_refuses_a_non_positive_distance_at_load_time(tmp_path):
    data = yaml.safe_load((PROJECT_DIR / "config" / "config.yml").read_text())
    data["park_access"]["walk_distance_m"] = 0
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as err:
        load_config(path, "dev")
    assert str(err.value) == (
        f"{path}: park_access.walk_distance_m: input should be greater than 0, got 0 "
        "(PROJECT_ENV=dev)")


def test_summary_refuses_a_layer_without_the_near_flag(city):
    with pytest.raises(FieldNotFoundError) as err:
        park_access.parcel_summary(city, city.parcels_fc)
    assert str(err.value) == (f"{city.parcels_fc}: has no near_park field; pass the output of "
                              "parcels_near_parks")
