"""The Dagster entry point named by dagster_home/workspace.yaml: the only place things are wired."""

import importlib.util
import sys
from pathlib import Path

import dagster as dg

# Dagster loads this file from a working directory of its own choosing: make the project's
# packages importable even where `pip install -e .` happened in another environment.
DIR_PRJ = Path(__file__).resolve().parent.parent
if importlib.util.find_spec("arcpy_orchestration") is None:
    src_dir = DIR_PRJ / "src"
    if not src_dir.exists():
        raise OSError(f"Unable to import arcpy_orchestration (no {src_dir}).")
    sys.path.insert(0, str(src_dir))

import arcpy_orchestration  # noqa: E402,F401  (initialises the package's loggers)
from arcpy_orchestration.config import get_config  # noqa: E402

config = get_config()

PARK_ACCESS_GROUP = "park_access"


@dg.asset(group_name=PARK_ACCESS_GROUP)
def settings_snapshot(context: dg.AssetExecutionContext) -> dict:
    """Placeholder until the pipeline lands: records the settings the pipeline will use."""
    context.log.info("PROJECT_ENV=%s, working WKID %s", config.env, config.spatial.working_wkid)
    return {"env": config.env, "working_wkid": config.spatial.working_wkid}


park_access_job = dg.define_asset_job(
    name="park_access_job",
    selection=dg.AssetSelection.groups(PARK_ACCESS_GROUP),
)

defs = dg.Definitions(assets=[settings_snapshot], jobs=[park_access_job])
