"""Backend selection, dataset paths, and the nearest-park search against brute force."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import shapely

from arcpy_orchestration import datasets, gis, sample_data
from arcpy_orchestration.errors import BackendUnavailableError, DatasetNotFoundError
from arcpy_orchestration.gis import proximity
from arcpy_orchestration.gis.open_source import read, repair
from arcpy_orchestration.summary import GroupStats, Stats, Summary, assemble


def test_auto_picks_open_source_here_and_names_what_is_missing(monkeypatch):
    assert "arcpy" not in sys.modules
    assert gis.resolve_backend_name("auto") == "open_source"
    assert type(gis.get_backend("open_source")).__name__ == "OpenSourceBackend"
    monkeypatch.setitem(sys.modules, "pyogrio", None)
    with pytest.raises(BackendUnavailableError) as err:
        gis.resolve_backend_name("auto")
    assert str(err.value) == (
        "the open-source GIS backend needs pyogrio, which do not import here; install them "
        "with `pip install -e '.[gis]'` or run where arcpy is available")


def test_unknown_backend_choice():
    with pytest.raises(BackendUnavailableError) as err:
        gis.resolve_backend_name("qgis")
    assert str(err.value) == (
        "gis.backend 'qgis' is not a backend; use one of: auto, arcpy, open_source")


@pytest.mark.parametrize(("path", "container", "layer", "kind"), [
    ("data/city.gdb/parcels", "data/city.gdb", "parcels", "gdb"),
    ("data/City.GDB/landbase/parcels", "data/City.GDB", "parcels", "gdb"),
    ("data/city.gpkg/parks", "data/city.gpkg", "parks", "gpkg"),
    ("data/city.gpkg", "data/city.gpkg", None, "gpkg"),
    ("data/parcels.shp", "data/parcels.shp", None, "shp"),
    ("work/parcels_projected.parquet", "work/parcels_projected.parquet", None, "parquet"),
])
def test_dataset_paths(path, container, layer, kind):
    ref = datasets.parse(path)
    assert (ref.container, ref.layer, ref.kind) == (Path(container), layer, kind)


def test_workspace_outputs():
    assert datasets.workspace_output("w", "x", "parquet") == "w/x.parquet"
    assert datasets.workspace_output("w.gdb", "x", "parquet") == "w.gdb/x"
    assert datasets.summary_path("w.gdb") == Path("w_parcel_summary.json")
    assert datasets.summary_path("w") == Path("w/parcel_summary.json")
    assert datasets.detail_csv_path("r/s.xlsx") == Path("r/s_parcels.csv")
    with pytest.raises(DatasetNotFoundError):
        datasets.parse("parcels.csv")


def brute_force(geoms, targets):
    if len(targets) == 0:
        return np.full(len(geoms), np.nan)
    return shapely.distance(geoms[:, None], targets[None, :]).min(axis=1)


def test_nearest_distance_equals_brute_force_on_random_shapes():
    rng = np.random.default_rng(7)
    centres = rng.uniform(0, 5000, (400, 2))
    geoms = shapely.box(*centres.T, *(centres + rng.uniform(5, 60, (400, 2))).T)
    geoms[::50] = None  # missing geometries: no distance
    geoms[1::50] = shapely.Polygon()
    pts = rng.uniform(0, 5000, (25, 2))
    targets = shapely.buffer(shapely.points(pts), rng.uniform(10, 300, 25), quad_segs=3)
    targets[0] = shapely.union(targets[0], shapely.box(4900, 4900, 5000, 5000))  # multipart
    got = proximity.nearest_distance(geoms, targets, 300.0, chunk=64, threads=2)
    expected = brute_force(geoms, targets)
    assert np.isnan(got[::50]).all() and np.isnan(got[1::50]).all()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)
    # "near" is exactly what STRtree dwithin decides
    tree = shapely.STRtree(targets)
    hit = np.zeros(len(geoms), bool)
    hit[tree.query(geoms, predicate="dwithin", distance=300.0)[0]] = True
    assert (np.nan_to_num(got, nan=np.inf) <= 300.0).tolist() == hit.tolist()


def test_nearest_distance_without_targets_or_geometries():
    geoms = shapely.box([0, 10], [0, 10], [1, 11], [1, 11])
    assert np.isnan(proximity.nearest_distance(geoms, np.array([], dtype=object), 5)).all()
    assert len(proximity.nearest_distance(np.array([], dtype=object), geoms, 5)) == 0


def test_nearest_distance_on_the_sample_city_equals_brute_force(tmp_path):
    city = sample_data.generate(tmp_path / "city", parcels=600, parks=12, formats=("gpkg",))
    parcels = read(city.layer("parcels", "gpkg")).to_crs(26910).geometry.values
    parks, repaired = repair(read(city.layer("parks", "gpkg")).to_crs(26910).geometry.values)
    assert repaired == city.invalid_parks >= 1
    got = proximity.nearest_distance(np.asarray(parcels), parks, 250.0)
    np.testing.assert_allclose(got, brute_force(np.asarray(parcels), parks), atol=1e-9)
    assert 0 < (got <= 250).sum() < len(got)


def test_argmin_per_group_handles_ties_and_unsorted_groups():
    groups = np.array([0, 0, 0, 2, 2, 5])
    values = np.array([3.0, 1.0, 1.0, 9.0, 4.0, 7.0])
    assert proximity._argmin_per_group(groups, values).tolist() == [1, 4, 5]
    order = np.array([5, 0, 3, 1, 4, 2])
    picked = proximity._argmin_per_group(groups[order], values[order])
    assert sorted(order[picked].tolist()) in ([1, 4, 5], [2, 4, 5])


def test_summary_round_trips_through_json_and_previews_as_markdown(tmp_path):
    groups = [
        GroupStats(None, "near", Stats(2, 1, 10.0, 10.0, 10.0)),
        GroupStats(None, "all", Stats(3, 2, 30.0, 15.0, 15.0)),
        GroupStats("10", "all", Stats(2, 1, 10.0, 10.0, 10.0)),
        GroupStats("9", "all", Stats(1, 1, 20.0, 20.0, 20.0)),
        GroupStats("(no district)", "all", Stats()),
    ]
    summary = assemble(groups, walk_distance_m=800, value_field="v", district_field="d")
    assert [a.area for a in summary.districts] == ["9", "10", "(no district)"]  # numeric order
    assert summary.overall.not_near == Stats()
    assert summary.overall.share_value_near == pytest.approx(1 / 3)
    back = Summary.read_json(summary.write_json(tmp_path / "s.json"))
    assert back == summary
    lines = summary.to_markdown().splitlines()
    assert lines[0] == ("| d | parcels | near | share near | v total | share of value near | "
                        "median near | median not near | no value |")
    assert lines[2] == "| All parcels | 3 | 2 | 66.7% | 30 | 33.3% | 10 | – | 1 |"
