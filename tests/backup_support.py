"""Helpers for the backup and restore tests: real Dagster runs, snapshots of what Dagster's APIs
show, the CLI, and PostgreSQL program wrappers that record their argv."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import dagster as dg
from click.testing import CliRunner, Result

from dagpg.cli import cli
from dagpg.pgbin import find_program


@dg.asset
def greeting(context) -> str:
    print("hello from greeting's stdout")  # lands in the compute logs
    context.log.info("greeting computed")
    return "hello"


@dg.asset
def shout(greeting: str) -> str:
    print(f"shouting {greeting}")
    return greeting.upper()


@dg.asset_check(asset=shout)
def shout_is_loud(shout: str) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=shout.isupper())


def materialize(home: Path, runs: int = 2) -> list[str]:
    """Materialize two assets (and a check) `runs` times into the instance at `home`."""
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        ids = []
        for _ in range(runs):
            result = dg.materialize([greeting, shout, shout_is_loud], instance=instance)
            assert result.success
            ids.append(result.run_id)
        return ids
    finally:
        instance.dispose()


def dagster_view(home: Path) -> dict:
    """What Dagster's own APIs show about the instance: runs, every event of every run (with
    its storage id), asset records and check executions."""
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        runs = instance.get_runs()
        view = {"runs": sorted((r.run_id, r.job_name, r.status.value) for r in runs)}
        view["events"] = {
            r.run_id: [(rec.storage_id, rec.event_log_entry.dagster_event_type)
                       for rec in instance.get_records_for_run(r.run_id, limit=10_000).records]
            for r in runs
        }
        view["assets"] = sorted(
            (rec.asset_entry.asset_key.to_user_string(),
             rec.asset_entry.last_materialization_record.storage_id,
             rec.asset_entry.last_run_id)
            for rec in instance.get_asset_records()
        )
        check_key = dg.AssetCheckKey(dg.AssetKey("shout"), "shout_is_loud")
        view["checks"] = sorted(
            (c.run_id, c.status.value)
            for c in instance.event_log_storage.get_asset_check_execution_history(
                check_key, limit=100)
        )
        return view
    finally:
        instance.dispose()


def run_cli(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def error_line(result: Result) -> str:
    """The one line a failed command printed on stderr (besides `… ` progress lines)."""
    lines = [ln for ln in result.stderr.strip().splitlines() if not ln.startswith("… ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def backup(dest: Path) -> dict:
    result = run_cli("backup", "--dest", str(dest), "--json")
    assert result.exit_code == 0, result.output + result.stderr
    return json.loads(result.stdout)


def backup_names(directory: Path) -> list[str]:
    """Everything in the backups folder, hidden leftovers included."""
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def flip_byte(path: Path, offset: int | None = None) -> int:
    """Invert one byte (by default in the middle of the file); returns its offset."""
    data = bytearray(path.read_bytes())
    offset = len(data) // 2 if offset is None else offset
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    return offset


def wrapper_bindir(folder: Path, *, record: Path, limit_kb: int | None = None) -> Path:
    """A bin folder (for DAGPG_PG_BINDIR) whose pg_dump, pg_restore and psql record their argv
    and whether PGPASSWORD was in their environment, then exec the real program. With
    `limit_kb`, pg_dump may write no more than that (ulimit -f): a write failing midway."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("pg_dump", "pg_restore", "psql"):
        real = find_program(name).path
        limit = f"ulimit -f {limit_kb}\n" if limit_kb and name == "pg_dump" else ""
        script = folder / name
        script.write_text(
            "#!/bin/sh\n"
            f"printf '%s\\0' \"$0\" \"$@\" >> '{record}'\n"
            f"printf 'PGPASSWORD=%s\\n' \"${{PGPASSWORD:+set}}\" >> '{record}.env'\n"
            f"{limit}exec '{real}' \"$@\"\n"
        )
        script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return folder


def recorded_argv(record: Path) -> list[str]:
    return [a for a in record.read_bytes().decode().split("\0") if a] if record.exists() else []


def tree_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()} if root.exists() else {}


def modes(root: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(os.stat(p).st_mode) for p in [root, *root.iterdir()]}
