"""A SQLite Dagster instance written by real Dagster, for the migrate-from-sqlite tests.

`build_sqlite_home(home, log_dir)` materializes assets in-process (successful and failed runs, a
multi_asset, an asset check, static and dynamic partitions, a runless event in the hidden
`history/runs/.db` shard, a wiped asset, a concurrency limit, a backfill), then runs
`dagster-daemon` briefly so that a schedule ticks and launches a run, the asset sensor moves its
cursor and launches a run, the run-status sensor records a cursor, the run-retry consumer
stores its cursors in kvs, and the backfill completes. A deleted run (its emptied shard stays)
and an asset key too long for PostgreSQL give the migration something to handle and report.
"""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from dagpg import pg
from tests import processes

PROJECT_DIR = Path(__file__).resolve().parents[1]
DEFS_FILE = Path(__file__).resolve().parent / "migrate_fixture_defs.py"
LOCATION = "migrate_fixture"
BACKFILL_PARTITIONS = ["south", "east"]
LONG_KEY = "survey_" + "x" * 600


@dataclass(frozen=True)
class SqliteHome:
    home: Path
    base_dir: Path
    workspace: Path
    backfill_id: str
    checksums: dict[str, str] | None = None

    def unchanged(self) -> bool:
        """True if no file under the SQLite base_dir changed, appeared or vanished."""
        return checksums(self.base_dir) == self.checksums


_SHARED: list[SqliteHome] = []


def shared_home(tmp_path_factory) -> SqliteHome:
    """One fixture instance per test session, shared by every test module that asks for it.

    Tests only read it (migrate it, or copy it before spoiling it)."""
    if not _SHARED:
        root = tmp_path_factory.mktemp("sqlite_source")
        built = build_sqlite_home(root / "dagster_home", root / "logs")
        _SHARED.append(SqliteHome(**{**built.__dict__,
                                     "checksums": checksums(built.base_dir)}))
    return _SHARED[0]


def copy_home(fixture: SqliteHome, dest: Path) -> SqliteHome:
    """A private copy (same layout, dagster.yaml pointing at the copy) a test may spoil."""
    shutil.copytree(fixture.home, dest, symlinks=True)
    write_sqlite_yaml(dest)
    return SqliteHome(home=dest, base_dir=dest / "storage", workspace=fixture.workspace,
                      backfill_id=fixture.backfill_id, checksums=checksums(dest / "storage"))


def write_workspace(path: Path) -> Path:
    path.write_text(
        "load_from:\n"
        "  - python_file:\n"
        f"      relative_path: {DEFS_FILE}\n"
        "      attribute: defs\n"
        f"      location_name: {LOCATION}\n"
        f"      working_directory: {PROJECT_DIR}\n",
        encoding="utf-8",
    )
    return path


def write_sqlite_yaml(home: Path) -> Path:
    """The guide's §3.2 dagster.yaml: `storage: sqlite: base_dir: <home>/storage`."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(
        f"""storage:
  sqlite:
    base_dir: {home / "storage"}
compute_logs:
  module: dagster._core.storage.local_compute_log_manager
  class: LocalComputeLogManager
  config:
    base_dir: {home / "compute_logs"}
run_retries:
  enabled: true
telemetry:
  enabled: false
""",
        encoding="utf-8",
    )
    return home / "storage"


def build_sqlite_home(home: Path, log_dir: Path) -> SqliteHome:
    import dagster as dg
    from dagster import DagsterInstance

    from tests import migrate_fixture_defs as m

    base_dir = write_sqlite_yaml(home)
    workspace = write_workspace(home / "workspace.yaml")
    instance = DagsterInstance.from_config(str(home))
    try:
        for _ in range(2):
            dg.materialize([m.parks, m.city, m.parks_not_empty, m.scratch], instance=instance)
        m.failing_job.execute_in_process(instance=instance, raise_on_error=False)
        instance.event_log_storage.set_concurrency_slots(m.POOL, 2)
        dg.materialize([m.districts], partition_key="north", instance=instance)
        instance.add_dynamic_partitions("uploads", ["u1", "u2"])
        dg.materialize([m.uploads], partition_key="u1", instance=instance)
        instance.report_runless_asset_event(
            dg.AssetMaterialization("external_report", metadata={"source": "manual"}))
        instance.wipe_assets([dg.AssetKey("scratch")])
        # A key longer than PostgreSQL's asset_keys.asset_key (varchar 512) can hold.
        instance.report_runless_asset_event(dg.AssetMaterialization(LONG_KEY))
        # A deleted run leaves its (emptied) shard file behind.
        deleted = m.note_job.execute_in_process(instance=instance, tags={"team": "gis"})
        instance.delete_run(deleted.run_id)
        instance.run_storage.get_run_storage_id()  # the UI's instanceId, as the webserver does
        backfill_id = _request_backfill(instance, m)
        _start_schedule_in_the_past(instance, workspace)
    finally:
        instance.dispose()
    _run_daemon(home, workspace, log_dir, backfill_id)
    with DagsterInstance.from_config(str(home)) as instance:
        # a success the run-status sensor has not seen yet: it must pick it up on PostgreSQL
        m.note_job.execute_in_process(instance=instance)
    return SqliteHome(home=home, base_dir=base_dir, workspace=workspace, backfill_id=backfill_id)


def _request_backfill(instance, m) -> str:
    import dagster as dg
    from dagster._core.execution.backfill import PartitionBackfill

    backfill_id = uuid.uuid4().hex[:8]
    graph = dg.Definitions(assets=[m.districts]).resolve_asset_graph()
    instance.add_backfill(PartitionBackfill.from_asset_partitions(
        backfill_id=backfill_id, asset_graph=graph, partition_names=BACKFILL_PARTITIONS,
        asset_selection=[dg.AssetKey("districts")], backfill_timestamp=time.time(),
        tags={"purpose": "fixture"}, dynamic_partitions_store=instance, all_partitions=False,
        title="districts backfill", description=None, run_config=None,
    ))
    return backfill_id


def _start_schedule_in_the_past(instance, workspace: Path) -> None:
    """Started 2 minutes ago, so the daemon's first iteration owes it a tick right away."""
    from dagster._core.remote_origin import RemoteRepositoryOrigin
    from dagster._core.scheduler.instigation import (
        InstigatorState,
        InstigatorStatus,
        InstigatorType,
        ScheduleInstigatorData,
    )
    from dagster._core.workspace.load import location_origins_from_yaml_paths

    (location,) = location_origins_from_yaml_paths([str(workspace)])
    origin = RemoteRepositoryOrigin(location, "__repository__").get_instigator_origin(
        "tick_schedule")
    instance.add_instigator_state(InstigatorState(
        origin, InstigatorType.SCHEDULE, InstigatorStatus.RUNNING,
        ScheduleInstigatorData("* * * * *", start_timestamp=time.time() - 75),
    ))


def _run_daemon(home: Path, workspace: Path, log_dir: Path, backfill_id: str) -> None:
    daemon = processes.start_daemon(home, log_dir, workspace=workspace)
    try:
        processes.wait_for(lambda: _daemon_done(home / "storage", backfill_id), timeout=240,
                           what="the SQLite fixture's schedule, sensors and backfill",
                           proc=daemon, interval=1)
    finally:
        processes.stop(daemon)


def _daemon_done(base_dir: Path, backfill_id: str) -> bool:
    from dagster import DagsterInstance

    with DagsterInstance.from_config(str(base_dir.parent)) as instance:
        return _settled(instance, backfill_id)


def _settled(instance, backfill_id: str) -> bool:
    from dagster._core.execution.backfill import BulkActionStatus
    from dagster._core.scheduler.instigation import TickStatus
    from dagster._core.storage.dagster_run import DagsterRunStatus, RunsFilter

    states = {s.instigator_name: s for s in instance.all_instigator_state()}
    if not all(name in states for name in ("tick_schedule", "parks_sensor", "success_sensor")):
        return False
    cursors = {n: states[n].instigator_data.cursor for n in ("parks_sensor", "success_sensor")}
    if not all(cursors.values()):
        return False
    ticks = instance.get_ticks(states["tick_schedule"].instigator_origin_id,
                               states["tick_schedule"].selector_id)
    if not any(t.status == TickStatus.SUCCESS and t.run_ids for t in ticks):
        return False
    backfill = instance.get_backfill(backfill_id)
    if backfill is None or backfill.status != BulkActionStatus.COMPLETED_SUCCESS:
        return False
    unfinished = instance.get_runs_count(RunsFilter(statuses=[
        s for s in DagsterRunStatus if s not in (DagsterRunStatus.SUCCESS,
                                                 DagsterRunStatus.FAILURE,
                                                 DagsterRunStatus.CANCELED)]))
    return unfinished == 0


def checksums(root: Path) -> dict[str, str]:
    """SHA-256 of every file under `root` (to prove the source was never modified)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file()
    }


def sqlite_rows(path: Path, query: str) -> list[tuple]:
    """Rows from a SQLite file, read without creating -wal/-shm files next to it."""
    conn = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
    try:
        return conn.execute(query).fetchall()
    finally:
        conn.close()


def assert_one_migration_copied_every_event_once(target) -> None:
    """The target holds one finished migration, and however many attempts it took, each event
    was copied once: the rows its committed units recorded are the rows in event_logs."""
    with pg.connection(target) as conn, conn.cursor() as cur:
        cur.execute("SELECT id, status FROM dagpg.migration_runs")
        (migration_id, status), = cur.fetchall()
        assert status == "done"
        cur.execute("SELECT sum(rows) FROM dagpg.migration_steps WHERE migration_id = %s "
                    "AND step LIKE 'events:%%'", (migration_id,))
        copied = cur.fetchone()[0]
        cur.execute("SELECT count(*) FROM event_logs")
        assert copied == cur.fetchone()[0] > 0
