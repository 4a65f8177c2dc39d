"""Dagster instances over both sides of a migration, for verification through Dagster's APIs.

The SQLite side is Dagster's own SQLite storages pointed at read-only URIs (immutable files, or
the private copies of files with a pending -wal), so reading through them can never write to
the source; a run without a shard reads an empty shard made in the scratch folder.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

from dagpg.migrate.source import INDEX_SHARD, SourceFiles


def _sqlalchemy_url(files: SourceFiles, path: Path) -> str:
    real, immutable = files.readable_path(path)
    flags = "mode=ro&immutable=1" if immutable else "mode=ro"
    return f"sqlite:///file:{quote(str(real))}?{flags}&uri=true"


def _empty_shard(scratch: Path) -> Path:
    from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage

    folder = scratch / "empty-shard"
    if not (folder / f"{INDEX_SHARD}.db").exists():
        SqliteEventLogStorage(str(folder)).dispose()  # creates index.db at Dagster's head
    return folder / f"{INDEX_SHARD}.db"


def _event_log_storage(files: SourceFiles, scratch: Path):
    from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage

    layout = files.layout
    empty = _empty_shard(scratch)

    class ReadOnlyEventLogStorage(SqliteEventLogStorage):
        def path_for_shard(self, run_id: str) -> str:
            return str(layout.shard_path(run_id))

        def conn_string_for_shard(self, shard_name: str) -> str:
            path = layout.shard_path(shard_name)
            return _sqlalchemy_url(files, path if path.exists() else empty)

        def _initdb(self, engine, for_index_shard=False) -> None:
            # Every file is at Dagster's head (checked, or upgraded on a copy) and read-only:
            # skip the per-shard alembic check, which reloads every revision file (~40 ms).
            return None

    return ReadOnlyEventLogStorage(str(layout.shards_dir))


@contextlib.contextmanager
def target_instance(instance) -> Iterator:
    """The PostgreSQL instance, holding one open connection per storage as the webserver does
    (a new connection per call costs a SCRAM handshake)."""
    from dagpg.schema import open_dagster_instance

    with open_dagster_instance(instance) as dagster:
        dagster.optimize_for_webserver(statement_timeout=0, pool_recycle=3600, max_overflow=2)
        yield dagster


@contextlib.contextmanager
def source_instance(files: SourceFiles, scratch: Path) -> Iterator:
    """A DagsterInstance reading the SQLite source, unable to write to it."""
    from dagster._core.instance import DagsterInstance, InstanceType
    from dagster._core.launcher.sync_in_memory_run_launcher import SyncInMemoryRunLauncher
    from dagster._core.run_coordinator import DefaultRunCoordinator
    from dagster._core.storage.noop_compute_log_manager import NoOpComputeLogManager
    from dagster._core.storage.root import LocalArtifactStorage
    from dagster._core.storage.runs.sqlite.sqlite_run_storage import SqliteRunStorage
    from dagster._core.storage.schedules.sqlite.sqlite_schedule_storage import (
        SqliteScheduleStorage,
    )

    layout = files.layout
    artifacts = scratch / "artifacts"
    os.makedirs(artifacts, exist_ok=True)
    schedules = layout.schedules_db if layout.schedules_db.exists() else _empty_schedules(scratch)
    instance = DagsterInstance(
        instance_type=InstanceType.EPHEMERAL,
        local_artifact_storage=LocalArtifactStorage(str(artifacts)),
        run_storage=SqliteRunStorage(_sqlalchemy_url(files, layout.runs_db)),
        event_storage=_event_log_storage(files, scratch),
        schedule_storage=SqliteScheduleStorage(_sqlalchemy_url(files, schedules)),
        run_coordinator=DefaultRunCoordinator(),
        compute_log_manager=NoOpComputeLogManager(),
        run_launcher=SyncInMemoryRunLauncher(),
        settings={"telemetry": {"enabled": False}},
    )
    try:
        yield instance
    finally:
        instance.dispose()


def _empty_schedules(scratch: Path) -> Path:
    from dagster._core.storage.schedules.sqlite.sqlite_schedule_storage import (
        SqliteScheduleStorage,
    )

    folder = scratch / "empty-schedules"
    SqliteScheduleStorage.from_local(str(folder))
    return folder / "schedules.db"
