"""config/config.yml: environments, strict typing, one-line errors naming key and file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from arcpy_orchestration.config import load_config
from arcpy_orchestration.errors import ConfigError
from dagpg.cli import cli
from dagpg.errors import ConfigurationError
from dagpg.settings import find_config, load_settings

PROJECT_DIR = Path(__file__).resolve().parents[1]
CONFIG = PROJECT_DIR / "config" / "config.yml"


def write_config(tmp_path: Path, mutate) -> Path:
    data = yaml.safe_load(CONFIG.read_text())
    mutate(data)
    path = tmp_path / "config" / "config.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


def test_committed_config_loads_in_every_environment():
    for env in ("dev", "test", "prod"):
        config = load_config(CONFIG, env)
        assert config.env == env
        assert config.spatial.working_wkid == 26910
        assert config.park_access.walk_distance_m == 800
        assert config.project_dir == PROJECT_DIR
        kit = load_settings(CONFIG, env)
        assert kit.webserver.host == "127.0.0.1"
    assert load_config(CONFIG, "test").park_access.output_summary_path.startswith("reports/test")
    assert load_settings(CONFIG, "prod").backup.keep_daily == 14
    assert load_settings(CONFIG, "dev").backup.keep_daily == 7
    workbook = load_config(CONFIG, "dev").park_access.workbook
    assert (workbook.paper, workbook.value_format) == ("letter", "$#,##0")


def test_project_env_selects_the_overlay(monkeypatch):
    monkeypatch.setenv("PROJECT_ENV", "prod")
    assert load_settings(CONFIG).backup.keep_weekly == 8


def test_relative_paths_resolve_against_the_project_root():
    config = load_config(CONFIG, "dev")
    assert config.resolve("data/x.gdb") == PROJECT_DIR / "data" / "x.gdb"
    assert load_settings(CONFIG, "dev").resolve("backups") == PROJECT_DIR / "backups"


def test_unknown_environment(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(CONFIG, "staging")
    assert str(err.value) == (
        f"{CONFIG}: PROJECT_ENV='staging' is not an environment in this file "
        "(known: dev, prod, test); set PROJECT_ENV to one of them"
    )


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["park_access"].update(walk_distanc_m=5),
         "park_access.walk_distanc_m: unknown key; remove it or check its spelling"),
        (lambda d: d["park_access"].pop("value_field"),
         "park_access.value_field: missing key; add it"),
        (lambda d: d["park_access"].update(walk_distance_m="far"),
         "park_access.walk_distance_m: input should be a valid number, got 'far'"),
        (lambda d: d["spatial"].update(working_wkid="26910"),
         "spatial.working_wkid: input should be a valid integer, got '26910'"),
        (lambda d: d.update(spatail={}), "spatail: unknown key; remove it or check its spelling"),
        (lambda d: d["environments"]["dev"].update(park_access={"detail_row_cap": 1.5}),
         "park_access.detail_row_cap: input should be a valid integer, got 1.5"),
        (lambda d: d["park_access"]["workbook"].update(paper="legal"),
         "park_access.workbook.paper: input should be 'letter' or 'a4', got 'legal'"),
    ],
)
def test_pipeline_config_errors_name_key_and_file(tmp_path, mutate, expected):
    path = write_config(tmp_path, mutate)
    with pytest.raises(ConfigError) as err:
        load_config(path, "dev")
    assert str(err.value) == f"{path}: {expected} (PROJECT_ENV=dev)"
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["dagpg"]["backup"].update(keep_dayly=3),
         "dagpg.backup.keep_dayly: unknown key; remove it or check its spelling"),
        (lambda d: d["dagpg"]["webserver"].update(port="3000"),
         "dagpg.webserver.port: input should be a valid integer, got '3000'"),
        (lambda d: d["dagpg"]["verify"].update(heartbeat_max_age_s=-1),
         "dagpg.verify.heartbeat_max_age_s: input should be greater than 0, got -1"),
    ],
)
def test_kit_config_errors_exit_2_with_one_line(tmp_path, monkeypatch, mutate, expected):
    path = write_config(tmp_path, mutate)
    monkeypatch.setenv("DAGPG_CONFIG", str(path))
    result = CliRunner().invoke(cli, ["config", "show"])
    assert result.exit_code == 2
    assert result.output == f"Error: {path}: {expected} (PROJECT_ENV=dev)\n"


def test_kit_unknown_environment_exits_2(monkeypatch):
    monkeypatch.setenv("DAGPG_CONFIG", str(CONFIG))
    monkeypatch.setenv("PROJECT_ENV", "qa")
    result = CliRunner().invoke(cli, ["config", "show"])
    assert result.exit_code == 2
    assert "PROJECT_ENV='qa' is not an environment in this file" in result.output


def test_config_show_json(monkeypatch):
    monkeypatch.setenv("DAGPG_CONFIG", str(CONFIG))
    monkeypatch.setenv("PROJECT_ENV", "prod")
    result = CliRunner().invoke(cli, ["config", "show", "--json"])
    assert result.exit_code == 0, result.output
    assert '"keep_daily": 14' in result.output
    assert '"env": "prod"' in result.output


def test_broken_pipeline_config_stops_definitions_loading(tmp_path):
    """Dagster refuses to load the definitions with the one-line message (guide §4.2)."""
    path = write_config(tmp_path, lambda d: d["park_access"].pop("parks_fc"))
    result = subprocess.run(
        [sys.executable, "-c", "import runpy; runpy.run_path('scripts/dagster_definitions.py')"],
        cwd=PROJECT_DIR, capture_output=True, text=True,
        env={"PROJECT_CONFIG": str(path), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode != 0
    assert f"{path}: park_access.parks_fc: missing key; add it" in result.stderr


def test_a_config_that_cannot_be_read_is_one_line(tmp_path):
    folder = tmp_path / "config.yml"
    folder.mkdir()
    with pytest.raises(ConfigurationError) as err:
        load_settings(folder)
    assert str(err.value) == (
        f"cannot read {folder}: Is a directory; give the user running dagpg read access to it")


def test_a_folder_the_user_cannot_enter_is_no_config_there(tmp_path, monkeypatch):
    """Searching config/config.yml in a private folder finds nothing instead of crashing."""
    monkeypatch.delenv("DAGPG_CONFIG", raising=False)
    private = tmp_path / "private"
    (private / "config").mkdir(parents=True)
    (private / "config" / "config.yml").write_text("dagpg: {}\n")
    private.chmod(0o000)
    monkeypatch.chdir(tmp_path)
    try:
        with monkeypatch.context() as m:
            m.setattr(Path, "stat", _denied(Path.stat, private))
            assert find_config(private / "dagster_home") is None
    finally:
        private.chmod(0o755)


def _denied(stat, private):
    def fake(self, *args, **kwargs):
        if self.is_relative_to(private):
            raise PermissionError(13, "Permission denied", str(self))
        return stat(self, *args, **kwargs)
    return fake
