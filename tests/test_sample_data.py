"""The synthetic city: deterministic, in WGS84, with the flaws real data has."""

from __future__ import annotations

from pathlib import Path

import pyogrio
import pytest
import shapely
import yaml

from arcpy_orchestration import sample_data
from arcpy_orchestration.config import load_config
from arcpy_orchestration.gis.open_source import read

PROJECT_DIR = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    return sample_data.generate(tmp_path_factory.mktemp("sample") / "city", parcels=2000)


def test_city_has_both_formats_in_wgs84(city):
    for fmt in ("gdb", "gpkg"):
        layers = {name for name, _ in pyogrio.list_layers(getattr(city, fmt))}
        assert layers == {"parcels", "parks"}
        for layer in layers:
            assert pyogrio.read_info(getattr(city, fmt), layer=layer)["crs"] == "EPSG:4326"
    parcels = read(city.layer("parcels"))
    assert list(parcels.columns) == ["parcel_id", "district", "assessed_value", "geometry"]
    assert len(parcels) == city.parcels == 2000 and parcels.parcel_id.is_unique
    lon, lat = parcels.geometry.iloc[0].centroid.coords[0]
    assert -124 < lon < -120 and 44 < lat < 47  # UTM zone 10N, Oregon


def test_values_have_some_nulls_and_districts_cover_the_city(city):
    parcels = read(city.layer("parcels", "gpkg"))
    nulls = parcels.assessed_value.isna().mean()
    assert 0.005 < nulls < 0.05
    assert set(parcels.district) == set(sample_data.DISTRICTS)
    assert parcels.assessed_value.min() > 0


def test_parks_vary_and_include_multipart_and_invalid_ones(city):
    parks = read(city.layer("parks"))
    assert len(parks) == city.parks == sample_data.default_parks(2000) == 10
    assert city.invalid_parks >= 1
    assert (~shapely.is_valid(parks.geometry.values)).sum() == city.invalid_parks
    areas = parks[parks.is_valid].to_crs(26910).area
    assert areas.max() / areas.min() > 5
    assert (parks.geometry.apply(lambda g: len(g.geoms)) > 1).any()  # some parks are multipart


def test_same_arguments_same_city(tmp_path):
    a = sample_data.generate(tmp_path / "a", parcels=300, formats=("gpkg",))
    b = sample_data.generate(tmp_path / "b", parcels=300, formats=("gpkg",))
    c = sample_data.generate(tmp_path / "c", parcels=300, seed=1, formats=("gpkg",))
    for layer in ("parcels", "parks"):
        fa, fb = read(a.layer(layer, "gpkg")), read(b.layer(layer, "gpkg"))
        assert fa.drop(columns="geometry").equals(fb.drop(columns="geometry"))
        assert shapely.equals_exact(fa.geometry.values, fb.geometry.values).all()
    assert not read(c.layer("parcels", "gpkg")).assessed_value.equals(
        read(a.layer("parcels", "gpkg")).assessed_value)
    assert not list(tmp_path.glob(".a-*"))  # staging folder cleaned up


def write_config(project: Path, **park_access) -> Path:
    data = yaml.safe_load((PROJECT_DIR / "config" / "config.yml").read_text())
    data["park_access"].update(park_access)
    path = project / "config" / "config.yml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(data))
    return path


def test_generated_for_a_config_naming_the_missing_sample_city(tmp_path):
    config = load_config(write_config(tmp_path, sample_parcels=120), "dev")
    city = sample_data.ensure_for_config(config)
    assert city.folder == tmp_path / "data" / "sample" and city.parcels == 120
    assert (tmp_path / "data" / "sample" / "city.gdb").is_dir()
    assert sample_data.ensure_for_config(config) is None  # already there


def test_not_generated_for_other_inputs(tmp_path):
    config = load_config(write_config(tmp_path, parcels_fc="data/mine.gdb/parcels",
                                      parks_fc="data/mine.gdb/parks"), "dev")
    assert sample_data.ensure_for_config(config) is None
    assert not (tmp_path / "data").exists()
