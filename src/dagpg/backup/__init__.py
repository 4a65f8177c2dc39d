"""Backups and restores of a Dagster instance: `dagpg backup`, `dagpg restore`, `dagpg backups`.

A backup is a folder (named by its UTC start, e.g. 20261124T013000Z) holding a `pg_dump -Fc` of
the instance database, a tar.gz of the compute logs, copies of dagster.yaml and workspace.yaml,
and manifest.json (SHA-256 and size of each file, versions, alembic revisions, row counts).
The library API, for the CLI, Dagster jobs and notebooks alike; every verb takes the instance and
the kit's settings first, and finds the backups folder the same way (`directory=`, else
dagpg.backup.directory):

    instance = resolve_instance()
    settings = load_settings(dagster_home=instance.home)
    result = backup_if_due(instance, settings, older_than_h=20, progress=print)
    prune_backups(instance, settings)
"""

from dagpg.backup.catalog import BackupInfo, latest_backup
from dagpg.backup.create import (
    BackupResult,
    BackupSkipped,
    backup_due,
    backup_if_due,
    create_backup,
)
from dagpg.backup.folders import backup_directory
from dagpg.backup.listing import BackupList, list_backups
from dagpg.backup.restore import RestoreReport, restore_backup
from dagpg.backup.retention import PruneReport, plan_retention, prune_backups
from dagpg.backup.verify import VerifyReport, verify_backup

__all__ = [
    "BackupInfo", "BackupList", "BackupResult", "BackupSkipped", "PruneReport", "RestoreReport",
    "VerifyReport", "backup_directory", "backup_due", "backup_if_due", "create_backup",
    "latest_backup", "list_backups", "plan_retention", "prune_backups", "restore_backup",
    "verify_backup",
]
