"""The README's main job: park_access_job materialized into the PostgreSQL-backed instance."""

from __future__ import annotations

import subprocess
import sys

from dagpg import pg
from tests.processes import PROJECT_DIR


def test_run_script_materializes_into_postgres(dagster_home):
    result = subprocess.run(
        [sys.executable, str(PROJECT_DIR / "scripts" / "run_park_access.py")],
        capture_output=True, text=True, cwd=PROJECT_DIR,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    first = result.stdout.splitlines()[0]
    assert first.endswith("SUCCESS (stored by PostgresRunStorage)")
    run_id = first.split()[1].rstrip(":")
    with pg.connection(dagster_home.target) as conn, conn.cursor() as cur:
        cur.execute("SELECT status, pipeline_name FROM runs WHERE run_id = %s", (run_id,))
        assert cur.fetchone() == ("SUCCESS", "park_access_job")
        cur.execute("SELECT count(*) FROM event_logs WHERE run_id = %s "
                    "AND dagster_event_type = 'ASSET_MATERIALIZATION'", (run_id,))
        assert cur.fetchone()[0] >= 1
