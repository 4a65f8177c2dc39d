"""The README's main job: park_access_job materialized into the PostgreSQL-backed instance."""

from __future__ import annotations

import os
import subprocess
import sys

import yaml

from dagpg import pg
from tests.processes import PROJECT_DIR


def run_script(project, **park_access):
    """scripts/run_park_access.py against a project folder whose config names the sample city."""
    data = yaml.safe_load((PROJECT_DIR / "config" / "config.yml").read_text())
    data["park_access"].update(sample_parcels=300, **park_access)
    config = project / "config" / "config.yml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(yaml.safe_dump(data))
    return subprocess.run(
        [sys.executable, str(PROJECT_DIR / "scripts" / "run_park_access.py")],
        capture_output=True, text=True, cwd=project,
        env={**os.environ, "PROJECT_CONFIG": str(config)},
    )


def test_run_script_materializes_into_postgres(dagster_home, tmp_path):
    result = run_script(tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    first = lines[0]
    assert first.endswith("SUCCESS (stored by PostgresRunStorage)")
    run_id = first.split()[1].rstrip(":")
    assert "generated the sample city in" in result.stderr  # from a fresh clone: no data/ yet
    assert (tmp_path / "data" / "sample" / "city.gdb").is_dir()
    workbook = tmp_path / "reports" / "park_access_summary.xlsx"
    assert lines[-1] == f"workbook: {workbook}" and workbook.is_file()
    assert lines[-2].startswith("parcels within 800 m of a park: ")
    with pg.connection(dagster_home.target) as conn, conn.cursor() as cur:
        cur.execute("SELECT status, pipeline_name FROM runs WHERE run_id = %s", (run_id,))
        assert cur.fetchone() == ("SUCCESS", "park_access_job")
        cur.execute("SELECT count(*) FROM event_logs WHERE run_id = %s "
                    "AND dagster_event_type = 'ASSET_MATERIALIZATION'", (run_id,))
        assert cur.fetchone()[0] == 5


def test_run_script_reports_the_failing_step_in_one_line(dagster_home, tmp_path):
    result = run_script(tmp_path, value_field="value")
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0].endswith("FAILURE (stored by PostgresRunStorage)")
    parcels = tmp_path / "data" / "sample" / "city.gdb" / "parcels"
    assert lines[1] == (
        f"  project_inputs failed: park_access.value_field 'value' is not a field of {parcels} "
        "(fields there: parcel_id, district, assessed_value); set park_access.value_field in "
        "config/config.yml to one of them")
