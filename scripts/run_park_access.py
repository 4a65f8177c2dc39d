"""Materialize park_access_job into the instance DAGSTER_HOME points at, then show the result.

Used by scripts/quickstart.sh; works against any DAGSTER_HOME (PostgreSQL-backed or not). When
config/config.yml names the sample city (data/sample/city.gdb/...) and it is not there yet, it is
generated first (park_access.sample_parcels parcels). The first line printed is
`run <id>: <STATUS> (stored by <StorageClass>)`; the exit code is 0 only when the run succeeded.
"""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path

import dagster as dg

DEFINITIONS = Path(__file__).resolve().parent / "dagster_definitions.py"
SRC = DEFINITIONS.parent.parent / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

from arcpy_orchestration import sample_data  # noqa: E402
from arcpy_orchestration.config import get_config  # noqa: E402
from arcpy_orchestration.errors import PipelineError  # noqa: E402
from arcpy_orchestration.summary import Summary  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--job", default="park_access_job")
    args = parser.parse_args(argv)

    try:
        config = get_config()
        city = sample_data.ensure_for_config(config, progress=lambda m: print(m, file=sys.stderr))
        if city:
            print(f"generated the sample city in {city.folder} ({city.parcels:,} parcels, "
                  f"{city.parks:,} parks)", file=sys.stderr)
        defs: dg.Definitions = runpy.run_path(str(DEFINITIONS))["defs"]
    except PipelineError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2

    instance = dg.DagsterInstance.get()
    result = defs.resolve_job_def(args.job).execute_in_process(instance=instance,
                                                               raise_on_error=False)
    record = instance.get_run_record_by_id(result.run_id)
    storage = type(instance.run_storage).__name__
    print(f"run {result.run_id}: {record.dagster_run.status.value} (stored by {storage})")
    for event in result.get_asset_materialization_events():
        print(f"  materialized {event.asset_key.to_user_string()}")
    if not result.success:
        for event in result.all_events:
            if event.is_step_failure:
                error = event.step_failure_data.error
                error = (error.cause or error) if error else None
                message = error.message.strip().splitlines()[-1] if error else "unknown error"
                print(f"  {event.step_key} failed: {message.split(': ', 1)[-1]}")
        return 1
    if args.job == "park_access_job":
        summary = Summary.read_json(result.output_for_node("parcel_summary"))
        overall = summary.overall
        print(f"parcels within {summary.walk_distance_m:g} m of a park: "
              f"{overall.near.parcels:,} of {overall.all.parcels:,} "
              f"({overall.share_parcels_near:.1%}); {overall.share_value_near:.1%} of "
              f"{summary.value_field}")
        print(f"workbook: {result.output_for_node('summary_excel')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
