"""Materialize park_access_job into the instance DAGSTER_HOME points at, then show the result.

Used by scripts/quickstart.sh; works against any DAGSTER_HOME (PostgreSQL-backed or not).
"""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path

import dagster as dg

DEFINITIONS = Path(__file__).resolve().parent / "dagster_definitions.py"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--job", default="park_access_job")
    args = parser.parse_args(argv)

    defs: dg.Definitions = runpy.run_path(str(DEFINITIONS))["defs"]
    instance = dg.DagsterInstance.get()
    result = defs.resolve_job_def(args.job).execute_in_process(instance=instance)
    record = instance.get_run_record_by_id(result.run_id)
    storage = type(instance.run_storage).__name__
    print(f"run {result.run_id}: {record.dagster_run.status.value} (stored by {storage})")
    for event in result.get_asset_materialization_events():
        print(f"  materialized {event.asset_key.to_user_string()}")
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main())
