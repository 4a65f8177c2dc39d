"""The Dagster entry point named by dagster_home/workspace.yaml: the only place things are wired.

The park-access assets (guide §4): project_inputs (two outputs) -> parcels_near_parks ->
parcel_summary -> summary_excel, in group `park_access`, materialized by `park_access_job` and
daily by `park_access_daily`. The work is done by `arcpy_orchestration.park_access`, whose module
loggers log each step's milestones into the run (python_logs in dagster.yaml); the assets pass
dataset paths (strings) along through `PathIOManager` and attach metadata.

The instance's own nightly step (group `instance_ops`: `instance_backup`, then
`instance_history`) calls dagpg's library, the same code as `dagpg nightly`, so backups and
history prunes show in the UI.
"""

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
from arcpy_orchestration import gis, park_access  # noqa: E402
from arcpy_orchestration.config import get_config  # noqa: E402
from dagpg.instance import resolve_instance  # noqa: E402
from dagpg.nightly import BACKUP_STEP, nightly_steps  # noqa: E402
from dagpg.settings import load_settings  # noqa: E402

# Read once, at load time: a broken config/config.yml (or a backend that cannot import) stops the
# webserver and the daemon from loading with a one-line message, not the first scheduled run.
config = get_config()
SETTINGS = park_access.Settings.from_config(config)
BACKEND = gis.resolve_backend_name(SETTINGS.backend)  # arcpy itself is imported only in a run
KIT_SETTINGS = load_settings()  # the `dagpg:` section: backup directory, retention, schedule

PARK_ACCESS_GROUP = "park_access"
INSTANCE_OPS_GROUP = "instance_ops"
PATH_IO_MANAGER = "path_io_manager"


class PathIOManager(dg.ConfigurableIOManager):
    """Hands an asset's output, the path of the dataset or file it wrote, to the next asset, and
    stores nothing itself: the data already is where the path says (park_access.workspace, the
    workbook). The path becomes the materialization's `path`, which the UI shows as the asset's
    location; a later run that materializes only a downstream asset reads it back from there.
    (Dagster's default IO manager pickles the string to <DAGSTER_HOME>/storage/<asset> and shows
    that pickle's path instead.)"""

    def handle_output(self, context: dg.OutputContext, obj: str) -> None:
        context.add_output_metadata({"path": dg.MetadataValue.path(obj)})

    def load_input(self, context: dg.InputContext) -> str:
        key = context.asset_key
        event = context.instance.get_latest_materialization_event(key)
        path = event.asset_materialization.metadata.get("path") if event else None
        if path is None:
            raise dg.Failure(f"{key.to_user_string()} has never been materialized, so there is "
                             "no path to read; materialize it (or all of park_access_job) first")
        return str(path.value)


def percent(share: float) -> dg.MetadataValue:
    return dg.MetadataValue.text(f"{share:.1%}")


@dg.multi_asset(
    outs={
        "parks_projected": dg.AssetOut(
            dagster_type=str, io_manager_key=PATH_IO_MANAGER,
            description="Parks in the working CRS, invalid ones repaired."),
        "parcels_projected": dg.AssetOut(
            dagster_type=str, io_manager_key=PATH_IO_MANAGER,
            description="Parcels in the working CRS, invalid ones repaired."),
    },
    group_name=PARK_ACCESS_GROUP,
)
def project_inputs():
    """Check both input layers and project them to the working WKID."""
    result = park_access.project_inputs(SETTINGS)
    for name, layer in (("parks_projected", result.parks), ("parcels_projected", result.parcels)):
        yield dg.Output(layer.path, output_name=name, metadata={
            "features": layer.features,
            "repaired_geometries": layer.repaired,
            "empty_geometries": layer.empty,
            "crs": f"{result.crs.name} (WKID {result.crs.wkid})",
        })


@dg.asset(group_name=PARK_ACCESS_GROUP, dagster_type=str, io_manager_key=PATH_IO_MANAGER)
def parcels_near_parks(parks_projected: str, parcels_projected: str) -> dg.Output[str]:
    """The parcels, flagged `near_park` within walk distance of a park, with `park_dist_m`."""
    selection = park_access.parcels_near_parks(SETTINGS, parks_projected, parcels_projected)
    share = selection.near / selection.parcels if selection.parcels else 0.0
    return dg.Output(selection.path, metadata={
        "parcels": selection.parcels,
        "parcels_near": selection.near,
        "share_near": percent(share),
        "walk_distance_m": SETTINGS.walk_distance_m,
    })


@dg.asset(group_name=PARK_ACCESS_GROUP, dagster_type=str, io_manager_key=PATH_IO_MANAGER)
def parcel_summary(parcels_near_parks: str) -> dg.Output[str]:
    """Counts and value statistics, near vs not near, overall and per district (JSON)."""
    result = park_access.parcel_summary(SETTINGS, parcels_near_parks)
    overall = result.summary.overall
    return dg.Output(result.path, metadata={
        "share_parcels_near": percent(overall.share_parcels_near),
        "share_value_near": percent(overall.share_value_near),
        "parcels_without_value": overall.all.nulls,
        "districts": len(result.summary.districts),
        "preview": dg.MetadataValue.md(result.summary.to_markdown()),
    })


@dg.asset(group_name=PARK_ACCESS_GROUP, dagster_type=str, io_manager_key=PATH_IO_MANAGER)
def summary_excel(parcel_summary: str, parcels_near_parks: str) -> dg.Output[str]:
    """The analyst's workbook at park_access.output_summary_path."""
    result = park_access.summary_excel(SETTINGS, parcel_summary, parcels_near_parks)
    metadata = {
        "sheets": ", ".join(result.sheets),
        "parcels": result.parcels,
    }
    if result.detail_path:
        metadata["parcel_table"] = dg.MetadataValue.path(result.detail_path)
    return dg.Output(result.path, metadata=metadata)


park_access_job = dg.define_asset_job(
    name="park_access_job",
    selection=dg.AssetSelection.groups(PARK_ACCESS_GROUP),
    description="Project the inputs, flag parcels near parks, summarize, write the workbook.",
)

park_access_daily = dg.ScheduleDefinition(
    job=park_access_job,
    cron_schedule=config.park_access.schedule.cron,
    name="park_access_daily",
    execution_timezone=config.park_access.schedule.timezone,
    # On from the start (the guide's §7 switches it on by hand): a deployed schedule that waits
    # for a click is the guide's "scheduled runs never fire". Stopping it in the UI (or with
    # `dagster schedule stop`) is remembered in the database and outlasts this default.
    default_status=dg.DefaultScheduleStatus.RUNNING,
)



# -- The instance's nightly step (dagpg.nightly, the same as `dagpg nightly`): the backup and the
# backups' retention, then the history prune (dagpg.retention). Cron and timezone:
# dagpg.backup.schedule in config.yml.

INSTANCE_BACKUP = dg.AssetKey("instance_backup")
INSTANCE_HISTORY = dg.AssetKey("instance_history")


@dg.multi_asset(
    specs=[
        dg.AssetSpec(INSTANCE_BACKUP, group_name=INSTANCE_OPS_GROUP,
                     description="A backup of this Dagster instance (database, compute logs, "
                                 "dagster.yaml), then the backups' retention."),
        dg.AssetSpec(INSTANCE_HISTORY, group_name=INSTANCE_OPS_GROUP, deps=[INSTANCE_BACKUP],
                     description="The run history pruned to dagpg.retention (logs of old runs, "
                                 "then old runs), keeping what the asset catalog shows."),
    ],
)
def instance_nightly(context: dg.AssetExecutionContext):
    """Each step materializes as soon as it is done: a failed prune still records the backup."""
    instance = resolve_instance(context.instance.root_directory)
    settings = load_settings(dagster_home=instance.home)
    for step in nightly_steps(instance, settings, kind="dagster", progress=context.log.info):
        metadata = step.metadata()
        if "path" in metadata:
            metadata["path"] = dg.MetadataValue.path(metadata["path"])
        yield dg.MaterializeResult(
            asset_key=INSTANCE_BACKUP if step.name == BACKUP_STEP else INSTANCE_HISTORY,
            metadata=metadata)
        if not step.complete:  # e.g. compute log folders that could not be deleted
            raise dg.Failure("the history prune is not complete: "
                             + "; ".join(step.history.notes))


instance_backup_job = dg.define_asset_job(
    name="instance_backup_job",
    selection=dg.AssetSelection.assets(instance_nightly),
    description="Back up the Dagster instance, prune old backups, then prune the run history "
                "(dagpg nightly).",
)
instance_backup_nightly = dg.ScheduleDefinition(
    job=instance_backup_job,
    name="instance_backup_nightly",
    cron_schedule=KIT_SETTINGS.backup.schedule.cron,
    execution_timezone=KIT_SETTINGS.backup.schedule.timezone,
    default_status=dg.DefaultScheduleStatus.RUNNING,  # a backup nobody switched on is no backup
)

# Dagster sees only what is listed here.
defs = dg.Definitions(
    assets=[project_inputs, parcels_near_parks, parcel_summary, summary_excel,
            instance_nightly],
    jobs=[park_access_job, instance_backup_job],
    schedules=[park_access_daily, instance_backup_nightly],
    resources={PATH_IO_MANAGER: PathIOManager()},
)
