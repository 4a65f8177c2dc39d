"""Compute log files (each step's captured stdout/stderr) of pruned runs.

Dagster's LocalComputeLogManager keeps them in <base_dir>/<run_id>/compute_logs/ (1.13,
dagster/_core/storage/local_compute_log_manager.py; its own `delete_logs(prefix=[run_id])` removes
that folder the same way). They are deleted only after the database transaction that pruned the
run committed; a folder whose run no longer exists (a prune killed between the two, or Dagster's
own `delete_run`, which leaves them) is swept on the next prune. Other compute log managers
(S3, Azure, ...) are left alone and said so.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import shutil
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from dagpg.instance import Instance, read_dagster_yaml

log = logging.getLogger(__name__)

_RUN_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_LOCAL_CLASS = "LocalComputeLogManager"


@dataclass
class LogFiles:
    base_dir: Path | None  # None: not a local compute log manager
    note: str | None = None
    folders_deleted: int = 0
    bytes_deleted: int = 0
    orphans_deleted: int = 0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"base_dir": str(self.base_dir) if self.base_dir else None, "note": self.note,
                "folders_deleted": self.folders_deleted, "bytes_deleted": self.bytes_deleted,
                "orphan_folders_deleted": self.orphans_deleted, "errors": self.errors}


def for_instance(instance: Instance) -> LogFiles:
    """Where `instance` keeps compute logs, when they are local files."""
    _, data = read_dagster_yaml(instance.home)
    block = data.get("compute_logs")
    if isinstance(block, dict) and block.get("class") not in (None, _LOCAL_CLASS):
        return LogFiles(None, note=f"compute logs are kept by {block.get('class')}, not in local "
                                   "files: left alone")
    return LogFiles(instance.compute_logs_dir)


def delete_runs(files: LogFiles, run_ids: Iterable[str], *, dry_run: bool = False) -> None:
    """Delete the compute log folders of `run_ids` (call only after their prune committed)."""
    if files.base_dir is None:
        return
    for run_id in run_ids:
        _remove(files, run_id, dry_run=dry_run)


class Remover:
    """Deletes folders in a thread of its own while the next batches run (each submitted only
    after its transaction committed). Leaving the `with` block waits for every folder."""

    def __init__(self, files: LogFiles):
        self.files = files
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="dagpg-prune-files", daemon=True)

    def __enter__(self) -> Remover:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._queue.put(None)
        self._thread.join()

    def submit(self, run_ids: Iterable[str]) -> None:
        if self.files.base_dir is not None:
            self._queue.put(list(run_ids))

    def _work(self) -> None:
        while (run_ids := self._queue.get()) is not None:
            delete_runs(self.files, run_ids)


def sweep_orphans(files: LogFiles, conn, *, dry_run: bool = False) -> None:
    """Delete the folders of runs that no longer exist. A run's row is written before its first
    log file, so a folder listed here whose run is missing belongs to a deleted run."""
    if files.base_dir is None or not files.base_dir.is_dir():
        return
    names = [e.name for e in os.scandir(files.base_dir)
             if _RUN_ID.match(e.name) and e.is_dir(follow_symlinks=False)]
    if not names:
        return
    with conn.cursor() as cur:
        cur.execute("SELECT run_id FROM runs WHERE run_id = ANY(%s)", (names,))
        present = {r for (r,) in cur.fetchall()}
    conn.commit()
    for name in sorted(set(names) - present):
        if _remove(files, name, dry_run=dry_run):
            files.orphans_deleted += 1


def _remove(files: LogFiles, run_id: str, *, dry_run: bool) -> bool:
    if not _RUN_ID.match(run_id):
        return False
    folder = files.base_dir / run_id
    if folder.is_symlink() or not folder.is_dir():
        return False
    size = _size(folder)
    if not dry_run:
        try:
            shutil.rmtree(folder)
        except OSError as exc:
            files.errors.append(f"{folder}: {exc.strerror or exc}")
            log.warning("could not delete %s: %s", folder, exc)
            return False
    files.folders_deleted += 1
    files.bytes_deleted += size
    return True


def _size(folder: Path) -> int:
    total = 0
    for root, _dirs, names in os.walk(folder):
        for name in names:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total
