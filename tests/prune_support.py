"""Helpers for the prune tests: the history written once per session into a template database
(cloned per test, with a copy of its compute logs), and what Dagster's own APIs show about it."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from dagpg import pg, schema
from dagpg.backup import create_backup
from dagpg.instance import PgTarget, resolve_instance
from dagpg.settings import KitSettings
from tests import pgharness, prune_fixture

CONFIG = ("dagpg:\n  retention:\n    logs_days: 30\n    runs_days: 365\n"
          "    keep_last_runs: 1\n    batch_rows: {batch_rows}\n"
          "  backup:\n    directory: {backups}\n")


@dataclass(frozen=True)
class Template:
    database: str
    home: Path  # its compute logs are copied into each clone's home
    history: prune_fixture.History
    backups: Path


@dataclass(frozen=True)
class Clone:
    home: Path
    database: str
    target: PgTarget
    history: prune_fixture.History

    def instance(self):
        return resolve_instance(self.home)


_SHARED: list[Template] = []


def shared_template(pg_server, tmp_path_factory) -> Template:
    """Build the history once per session (real Dagster and its daemon, about a minute), age its
    runs, and take one real backup (its catalog row is the prune's undo)."""
    if _SHARED:
        return _SHARED[0]
    root = tmp_path_factory.mktemp("prune_history")
    database = pg_server.create_database(f"dagpg_prune_{root.name[-6:]}")
    target = pg_server.target(database)
    home = prune_fixture.write_builder_yaml(root / "dagster_home", target)
    backups = root / "backups"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(pgharness.PASSWORD_VAR, pg_server.admin.password or "")
        schema.upgrade(resolve_instance(home))
        history = prune_fixture.build_history(home, root / "logs")
        prune_fixture.age_runs(target)
        create_backup(resolve_instance(home), KitSettings(), directory=backups)
    _SHARED.append(Template(database, home, history, backups))
    return _SHARED[0]


def clone(pg_server, template: Template, dest: Path, *, batch_rows: int = 7) -> Clone:
    """A private copy: database, compute logs, a config.yml with the test's retention."""
    database = pg_server.create_database(template=template.database)
    target = pg_server.target(database)
    home = pgharness.write_dagster_home(dest / "dagster_home", target)
    shutil.copytree(template.home / "storage", home / "storage")
    config = dest / "config" / "config.yml"
    config.parent.mkdir(parents=True, exist_ok=True)
    # Its own backups folder; the catalog (cloned) names the template's backup, still there.
    config.write_text(CONFIG.format(batch_rows=batch_rows, backups=dest / "backups"),
                      encoding="utf-8")
    return Clone(home, database, target, template.history)


def rows(target: PgTarget, query: str, params=None) -> list[tuple]:
    with pg.connection(target) as conn, conn.cursor() as cur:
        cur.execute(query, params)
        return cur.fetchall()


def digest(target: PgTarget, home: Path) -> dict[str, str]:
    """A fingerprint of everything a prune may change: the rows of every table it touches (and
    the tables it must not), and the compute log folders."""
    out = {}
    for table, key in (("runs", "run_id"), ("run_tags", "id"), ("event_logs", "id"),
                       ("asset_event_tags", "id"), ("asset_check_executions", "id"),
                       ("asset_keys", "id"), ("concurrency_slots", "id"),
                       ("pending_steps", "id"), ("bulk_actions", "id"), ("instigators", "id"),
                       ("job_ticks", "id"), ("kvs", "key")):
        found = rows(target, f"SELECT md5(string_agg(t::text, '|' ORDER BY {key})) "  # noqa: S608
                             f"FROM {table} t")
        out[table] = found[0][0] or ""
    storage = home / "storage"
    out["compute_logs"] = hashlib.md5(
        "|".join(sorted(p.name for p in storage.iterdir())).encode()).hexdigest()
    return out


def catalog_view(home: Path) -> dict:
    """What Dagster's APIs show about assets, partitions, checks and instigators."""
    import dagster as dg
    from dagster._core.events import DagsterEventType
    from dagster._core.loader import LoadingContextForTest
    from dagster._core.storage.partition_status_cache import (
        get_and_update_asset_status_cache_value,
    )

    from tests import prune_fixture_defs as d

    partitioned = {d.daily_counts.key: d.DAILY, d.regions.key: d.REGIONS}
    view: dict = {}
    with dg.DagsterInstance.from_config(str(home)) as instance:
        keys = sorted(instance.get_asset_keys(), key=lambda k: k.to_string())
        view["asset_keys"] = [k.to_user_string() for k in keys]
        for key in keys:
            name = key.to_user_string()
            (record,) = instance.get_asset_records([key])
            entry = record.asset_entry
            last = entry.last_materialization_record
            mats = instance.fetch_materializations(key, limit=1).records
            obs = instance.fetch_observations(key, limit=1).records
            view[f"{name}: latest materialization"] = (
                last.storage_id if last else None, last.run_id if last else None,
                mats[0].storage_id if mats else None, entry.last_run_id)
            view[f"{name}: latest observation"] = (
                (obs[0].storage_id, obs[0].run_id,
                 obs[0].asset_observation.data_version) if obs else None)
            planned = instance.get_latest_planned_materialization_info(key)
            view[f"{name}: latest planned"] = (planned.storage_id, planned.run_id) \
                if planned else None
        for key, partitions_def in partitioned.items():
            name = key.to_user_string()
            view[f"{name}: materialized partitions"] = sorted(
                instance.get_materialized_partitions(key))
            view[f"{name}: latest id by partition"] = dict(sorted(
                instance.event_log_storage.get_latest_storage_id_by_partition(
                    key, DagsterEventType.ASSET_MATERIALIZATION).items()))
            view[f"{name}: status (cache)"] = _status(
                get_and_update_asset_status_cache_value(instance, key, partitions_def))
            instance.event_log_storage.wipe_asset_cached_status(key)  # and from scratch:
            view[f"{name}: status (rebuilt)"] = _status(
                get_and_update_asset_status_cache_value(instance, key, partitions_def))
        check_keys = [c.check_key for c in d.CHECKS]
        latest = instance.event_log_storage.get_latest_asset_check_execution_by_key(check_keys)
        view.update(asyncio.run(_checks(LoadingContextForTest(instance), latest)))
        states = sorted(instance.all_instigator_state(), key=lambda s: s.instigator_name)
        view["instigators"] = [(s.instigator_name, s.status.value,
                                getattr(s.instigator_data, "cursor", None)) for s in states]
        view["ticks"] = {s.instigator_name: [(t.tick_id, t.status.value, tuple(t.run_ids))
                                             for t in instance.get_ticks(s.instigator_origin_id,
                                                                         s.selector_id)]
                         for s in states}
        view["backfills"] = sorted((b.backfill_id, b.status.value)
                                   for b in instance.get_backfills())
        view["concurrency"] = instance.event_log_storage.get_concurrency_info(d.POOL).slot_count
    return view


async def _checks(context, latest) -> dict:
    """The newest execution of each check, its status as the UI resolves it (a planned one from
    its run) and whether it targets the latest materialization."""
    out = {}
    for check_key, execution in sorted(latest.items(), key=lambda kv: kv[0].to_user_string()):
        out[f"check {check_key.to_user_string()}"] = (
            execution.id, execution.run_id, execution.status.value,
            (await execution.resolve_status(context)).value,
            await execution.targets_latest_materialization(context))
    return out


def _status(value) -> dict | None:
    if value is None:
        return None
    return {"latest_storage_id": value.latest_storage_id,
            "materialized": value.serialized_materialized_partition_subset,
            "failed": value.serialized_failed_partition_subset,
            "in_progress": value.serialized_in_progress_partition_subset}


def run_events(home: Path, run_ids) -> dict[str, list[tuple[int, str | None]]]:
    """Each run's events as Dagster returns them: (storage id, event type)."""
    import dagster as dg

    with dg.DagsterInstance.from_config(str(home)) as instance:
        return {r: [(rec.storage_id, rec.event_log_entry.dagster_event_type
                     and rec.event_log_entry.dagster_event_type.value)
                    for rec in instance.get_records_for_run(r, limit=100_000).records]
                for r in run_ids}
