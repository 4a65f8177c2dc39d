"""A run history written by real Dagster on PostgreSQL, for the prune tests (and the benchmark).

`build_history(home, log_dir)` writes, era by era (every run tagged `fixture/age`):

- ancient: the only materialization ever of `legacy_report`, and of daily partition 2024-01-01;
- old: `city_job` twice (multi_asset + checks, one check failing), `check_job` (the parcels
  check alone, tagged aged: its execution points at the second city run's materialization),
  regions east and west
  failing, daily partitions 02 and 03, an observation of `rainfall`, `failing_job` three
  times, `note_job` twice (one still holding a concurrency slot, as a crashed run would), then
  `dagster-daemon`: a schedule tick and an asset-sensor tick each launch a run, two backfills
  complete (regions north/south; daily 04/05); afterwards the second backfill is set back to
  REQUESTED (in progress), and a CANCELING and a STARTED run are created;
- aged: `city_job`, region east succeeding, daily 02 again, `rainfall`, `note_job`;
- recent: `city_job`, `note_job`.

`age_runs(target)` then makes the eras old by moving each run's timestamps (runs'
create/update/start/end time, its events' timestamp column) back by the era's age: Dagster has no
API to write the past, so the database is rewritten, and only there.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from dagpg import pg
from dagpg.instance import PgTarget
from tests import pgharness, processes

PROJECT_DIR = Path(__file__).resolve().parents[1]
LOCATION = "prune_fixture"
AGES_DAYS = {"ancient": 730, "old": 400, "aged": 60, "recent": 0}


@dataclass
class History:
    backfill_done: str = ""
    backfill_open: str = ""
    canceling_run: str = ""
    started_run: str = ""
    slot_run: str = ""
    runs: dict[str, list[str]] = field(default_factory=dict)  # era -> run ids created in-process


def write_workspace(path: Path) -> Path:
    path.write_text(
        "load_from:\n"
        "  - python_module:\n"  # imported under import locks: the daemon's threads load it at once
        "      module_name: tests.prune_fixture_defs\n"
        "      attribute: defs\n"
        f"      location_name: {LOCATION}\n"
        f"      working_directory: {PROJECT_DIR}\n",
        encoding="utf-8",
    )
    return path


def write_builder_yaml(home: Path, target: PgTarget) -> Path:
    """The builder's dagster.yaml: runs are launched when submitted (no queue to wait for)."""
    pgharness.write_dagster_home(home, target)
    path = home / "dagster.yaml"
    path.write_text(path.read_text(encoding="utf-8").replace(
        "  class: QueuedRunCoordinator\n  config:\n    max_concurrent_runs: 4\n",
        "  class: DefaultRunCoordinator\n"), encoding="utf-8")
    return home


def build_history(home: Path, log_dir: Path) -> History:
    """Write the history into the instance at `home` (see write_builder_yaml)."""
    import dagster as dg
    from dagster._core.definitions.observe import observe as observe_assets

    from tests import prune_fixture_defs as d

    workspace = write_workspace(home / "workspace.yaml")
    history = History()
    with dg.DagsterInstance.from_config(str(home)) as instance:
        defs = d.defs

        def job(name: str, era: str, **tags):
            result = defs.resolve_job_def(name).execute_in_process(
                instance=instance, tags={d.AGE_TAG: era, **tags}, raise_on_error=False)
            history.runs.setdefault(era, []).append(result.run_id)
            return result.run_id

        def mat(assets, era: str, partition: str | None = None, **tags):
            result = dg.materialize(assets, instance=instance, partition_key=partition,
                                    tags={d.AGE_TAG: era, **tags}, raise_on_error=False)
            history.runs.setdefault(era, []).append(result.run_id)
            return result.run_id

        def observe(era: str):
            result = observe_assets([d.rainfall], instance=instance, tags={d.AGE_TAG: era})
            history.runs.setdefault(era, []).append(result.run_id)

        mat([d.legacy_report], "ancient")
        mat([d.daily_counts], "ancient", "2024-01-01")

        job("city_job", "old")
        job("city_job", "old", **{"fixture/check": "fail"})
        # Aged, so it stays: its check execution points at the old run's materialization, which
        # must stay too.
        job("check_job", "aged")
        for region in ("east", "west"):
            mat([d.regions], "old", region, **{"fixture/fail": region})
        mat([d.daily_counts], "old", "2024-01-02")
        mat([d.daily_counts], "old", "2024-01-03")
        observe("old")
        for _ in range(3):
            job("failing_job", "old")
        job("note_job", "old")
        history.slot_run = job("note_job", "old")
        instance.event_log_storage.set_concurrency_slots(d.POOL, 2)

        history.backfill_done = _request_backfill(instance, d.regions, ["north", "south"])
        history.backfill_open = _request_backfill(instance, d.daily_counts,
                                                  ["2024-01-04", "2024-01-05"])
        _start_schedule_in_the_past(instance, workspace)
    _run_daemon(home, workspace, log_dir, [history.backfill_done, history.backfill_open])

    with dg.DagsterInstance.from_config(str(home)) as instance:
        from dagster._core.execution.backfill import BulkActionStatus
        from dagster._core.storage.dagster_run import DagsterRunStatus

        # A finished run still holding a slot, as a crashed run worker leaves it (claimed after
        # the daemon ran, so that the backfill's runs were not kept waiting for it).
        instance.event_log_storage.claim_concurrency_slot(d.POOL, history.slot_run, "chatter")
        open_backfill = instance.get_backfill(history.backfill_open)
        instance.update_backfill(open_backfill.with_status(BulkActionStatus.REQUESTED))
        note = d.defs.resolve_job_def("note_job")
        history.canceling_run = instance.create_run_for_job(
            note, status=DagsterRunStatus.CANCELING, tags={d.AGE_TAG: "old"}).run_id
        history.started_run = instance.create_run_for_job(
            note, status=DagsterRunStatus.STARTED, tags={d.AGE_TAG: "old"}).run_id

        def job(name: str, era: str, **tags):  # noqa: F811  (the same, on this instance)
            result = d.defs.resolve_job_def(name).execute_in_process(
                instance=instance, tags={d.AGE_TAG: era, **tags}, raise_on_error=False)
            history.runs.setdefault(era, []).append(result.run_id)

        def mat(assets, era: str, partition: str | None = None):  # noqa: F811
            result = dg.materialize(assets, instance=instance, partition_key=partition,
                                    tags={d.AGE_TAG: era})
            history.runs.setdefault(era, []).append(result.run_id)

        job("city_job", "aged")
        mat([d.regions], "aged", "east")
        mat([d.daily_counts], "aged", "2024-01-02")
        result = observe_assets([d.rainfall], instance=instance, tags={d.AGE_TAG: "aged"})
        history.runs["aged"].append(result.run_id)
        job("note_job", "aged")
        job("city_job", "recent")
        job("note_job", "recent")
    return history


def age_runs(target: PgTarget) -> dict[str, int]:
    """Move each era's runs (by their `fixture/age` tag) back in time; returns runs per era."""
    moved = {}
    with pg.connection(target) as conn, conn.cursor() as cur:
        for era, days in AGES_DAYS.items():
            cur.execute("SELECT run_id FROM run_tags WHERE key = 'fixture/age' AND value = %s",
                        (era,))
            run_ids = [r[0] for r in cur.fetchall()]
            moved[era] = len(run_ids)
            if not days or not run_ids:
                continue
            cur.execute(
                "UPDATE runs SET create_timestamp = create_timestamp - make_interval(days => %s),"
                " update_timestamp = update_timestamp - make_interval(days => %s),"
                " start_time = start_time - %s, end_time = end_time - %s"
                " WHERE run_id = ANY(%s)",
                (days, days, days * 86400.0, days * 86400.0, run_ids))
            cur.execute("UPDATE event_logs SET timestamp = timestamp - make_interval(days => %s)"
                        " WHERE run_id = ANY(%s)", (days, run_ids))
        # Runless events (freshness changes) get their neighbour's time, so that event ids keep
        # growing with time, as they do in a history nobody rewrote.
        cur.execute("UPDATE event_logs e SET timestamp = (SELECT p.timestamp FROM event_logs p "
                    "WHERE p.id < e.id AND p.run_id <> '' ORDER BY p.id DESC LIMIT 1) "
                    "WHERE e.run_id = '' AND e.id > (SELECT min(id) FROM event_logs)")
    return moved


def _request_backfill(instance, asset, partitions: list[str]) -> str:
    import dagster as dg
    from dagster._core.execution.backfill import PartitionBackfill

    backfill_id = uuid.uuid4().hex[:8]
    graph = dg.Definitions(assets=[asset]).resolve_asset_graph()
    instance.add_backfill(PartitionBackfill.from_asset_partitions(
        backfill_id=backfill_id, asset_graph=graph, partition_names=partitions,
        asset_selection=[asset.key], backfill_timestamp=time.time(),
        tags={"fixture/age": "old"}, dynamic_partitions_store=instance, all_partitions=False,
        title=f"{asset.key.to_user_string()} backfill", description=None, run_config=None,
    ))
    return backfill_id


def _start_schedule_in_the_past(instance, workspace: Path) -> None:
    """Started 75 s ago, so the daemon's first iteration owes it a tick right away."""
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


def _run_daemon(home: Path, workspace: Path, log_dir: Path, backfills: list[str]) -> None:
    daemon = processes.start_daemon(home, log_dir, workspace=workspace)
    try:
        processes.wait_for(lambda: _settled(home, backfills), timeout=300,
                           what="the prune fixture's schedule, sensor and backfills",
                           proc=daemon, interval=1)
    finally:
        processes.stop(daemon)


def _settled(home: Path, backfills: list[str]) -> bool:
    import dagster as dg
    from dagster._core.execution.backfill import BulkActionStatus
    from dagster._core.scheduler.instigation import InstigatorStatus, TickStatus
    from dagster._core.storage.dagster_run import DagsterRunStatus, RunsFilter

    with dg.DagsterInstance.from_config(str(home)) as instance:
        states = {s.instigator_name: s for s in instance.all_instigator_state()}
        if not all(n in states for n in ("tick_schedule", "parcels_sensor")):
            return False
        if not states["parcels_sensor"].instigator_data.cursor:
            return False
        for name in ("tick_schedule", "parcels_sensor"):
            state = states[name]
            ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id)
            if not any(t.status == TickStatus.SUCCESS and t.run_ids for t in ticks):
                return False
            if state.is_running:  # one tick with a run is enough: no more runs from it
                instance.update_instigator_state(state.with_status(InstigatorStatus.STOPPED))
        for backfill_id in backfills:
            backfill = instance.get_backfill(backfill_id)
            if backfill is None or backfill.status != BulkActionStatus.COMPLETED_SUCCESS:
                return False
        unfinished = instance.get_runs_count(RunsFilter(statuses=[
            s for s in DagsterRunStatus if s not in (DagsterRunStatus.SUCCESS,
                                                     DagsterRunStatus.FAILURE,
                                                     DagsterRunStatus.CANCELED)]))
        return unfinished == 0
