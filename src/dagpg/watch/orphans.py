"""Runs whose run worker is gone from this host: find them, and end them through Dagster.

With the DefaultRunLauncher the run worker is a child of the daemon's code server, which
fails the run itself when the worker alone dies ("Run execution process for ... was terminated
by signal 9", within about a second: it polls every 0.5 s). When the worker, the code server
and the daemon die together (a reboot, a crashed or restarted service) nobody is left to
notice, and Dagster cannot check a worker's health itself (`supports_check_run_worker_health`
is False), so the run stays STARTING/STARTED/CANCELING forever and holds one of the queue's
`max_concurrent_runs`.

The worker's process id is in the run's own engine events: "Started process for run (pid: N)."
(written by the worker itself, `EngineEventData.in_process`), and again by the multiprocess
executor ("parent process (pid: N)"); the newest such event without a step key names the
current worker. It counts as gone when no process has that id, or the process that has it
started after the event (`procs.identity`), or the event is older than this machine's boot.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dagpg.watch import procs

if TYPE_CHECKING:
    from dagster import DagsterInstance

log = logging.getLogger(__name__)

_PAGE = 1000
# What the code server writes when it sees a run worker exit (dagster/_grpc/server.py,
# _check_for_orphaned_runs), just before it reports the run failed.
_DAGSTER_SAW_IT = "[DagsterApiServer] Run execution process for"


@dataclass(frozen=True)
class Worker:
    pid: int | None = None
    named_at: float | None = None  # the naming event's timestamp (epoch seconds)
    reported_by_dagster: bool = False  # the code server logged the worker's death


@dataclass
class Orphan:
    run_id: str
    job_name: str
    status: str  # STARTING | STARTED | CANCELING
    pid: int | None
    reason: str  # one sentence: what the keeper found
    before_boot: bool
    data: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "job": self.job_name, "status": self.status,
                "pid": self.pid, "reason": self.reason, "before_boot": self.before_boot}


class OrphanFinder:
    """Reads in-progress runs and their workers; remembers each run's worker and event cursor
    so a pass reads only new engine events."""

    def __init__(self, instance: DagsterInstance, *, starting_timeout_s: float):
        self.instance = instance
        self.starting_timeout_s = starting_timeout_s
        self._seen: dict[str, tuple[str | None, Worker]] = {}

    def find(self, *, boot: float | None = None, now: float | None = None) -> list[Orphan]:
        from dagster import DagsterRunStatus, RunsFilter

        boot = procs.boot_time() if boot is None else boot
        now = time.time() if now is None else now
        active = [DagsterRunStatus.STARTING, DagsterRunStatus.STARTED,
                  DagsterRunStatus.CANCELING]
        records = self.instance.get_run_records(RunsFilter(statuses=active))
        live = {r.dagster_run.run_id for r in records}
        self._seen = {k: v for k, v in self._seen.items() if k in live}
        found = []
        for record in records:
            orphan = self.judge(record, boot=boot, now=now)
            if orphan:
                found.append(orphan)
        return found

    def judge(self, record, *, boot: float, now: float) -> Orphan | None:
        run = record.dagster_run
        status = run.status.value
        worker = self.worker(run.run_id)

        def orphan(reason: str, before_boot: bool = False, **data) -> Orphan:
            return Orphan(run.run_id, run.job_name, status, worker.pid, reason, before_boot,
                          {"boot_time": boot, **data})

        if worker.pid is None:
            launched = self._launch_time(record)
            if launched < boot:
                return orphan(f"the run was launched at {_clock(launched)}, before this machine "
                              f"booted at {_clock(boot)}, and no run worker ever reported",
                              before_boot=True)
            if (status == "STARTING" and not self.instance.run_monitoring_enabled
                    and now - launched > self.starting_timeout_s):
                return orphan(f"no run worker reported in {now - launched:.0f} s since the "
                              f"launch at {_clock(launched)} (limit {self.starting_timeout_s:g} "
                              "s, dagpg.watch.starting_timeout_s)")
            return None
        if worker.named_at < boot:
            return orphan(f"its run worker (pid {worker.pid}, started {_clock(worker.named_at)}) "
                          f"did not survive the reboot at {_clock(boot)}", before_boot=True)
        state = procs.identity(worker.pid, worker.named_at)
        if state == procs.GONE:
            try:
                start = procs.started_at(worker.pid)
            except LookupError:
                start = None
            why = (f"process {worker.pid} now is another program, started {_clock(start)}"
                   if start else f"no process {worker.pid} runs on this host")
            return orphan(f"its run worker (pid {worker.pid}, started "
                          f"{_clock(worker.named_at)}) is gone: {why}")
        return None

    def worker(self, run_id: str) -> Worker:
        """The newest engine event with `pid` metadata and no step key names the worker."""
        from dagster import DagsterEventType

        cursor, worker = self._seen.get(run_id, (None, Worker()))
        while True:
            conn = self.instance.get_records_for_run(
                run_id, cursor=cursor, of_type=DagsterEventType.ENGINE_EVENT, limit=_PAGE)
            for record in conn.records:
                entry = record.event_log_entry
                event = entry.dagster_event
                if event is None or entry.step_key:
                    continue
                if (event.message or "").startswith(_DAGSTER_SAW_IT):
                    worker = Worker(worker.pid, worker.named_at, True)
                    continue
                metadata = getattr(event.event_specific_data, "metadata", None) or {}
                pid = metadata.get("pid")
                value = getattr(pid, "value", pid)
                if value is not None and str(value).isdigit():
                    worker = Worker(int(value), entry.timestamp)
            cursor = conn.cursor or cursor
            if not conn.has_more:
                break
        self._seen[run_id] = (cursor, worker)
        return worker

    def _launch_time(self, record) -> float:
        stats = self.instance.get_run_stats(record.dagster_run.run_id)
        return stats.launch_time or record.create_timestamp.timestamp()

    def still_active(self, run_id: str) -> bool:
        run = self.instance.get_run_by_id(run_id)
        return bool(run and run.status.value in ("STARTING", "STARTED", "CANCELING"))


def end_run(instance: DagsterInstance, orphan: Orphan, *, who: str) -> str:
    """End the run through Dagster's API: an engine event saying what the keeper found, then
    RUN_FAILURE (RUN_CANCELED for a run that was being canceled, as Dagster's own run monitor
    does), then its concurrency slots freed. Returns the status it now has."""
    from dagster import MetadataValue
    from dagster._core.events import EngineEventData, JobFailureData, RunFailureReason

    run = instance.get_run_by_id(orphan.run_id)
    if run is None or run.status.value not in ("STARTING", "STARTED", "CANCELING"):
        return run.status.value if run else "DELETED"
    canceling = run.status.value == "CANCELING"
    outcome = "canceled" if canceling else "failed"
    message = (f"[dagpg watch] {orphan.reason[0].upper()}{orphan.reason[1:]}. Nothing is left "
               f"to finish this {run.status.value} run, so the keeper marks it {outcome} "
               f"({who}).")
    metadata = {"keeper": MetadataValue.text(who),
                "finding": MetadataValue.text(orphan.reason)}
    if orphan.pid is not None:
        metadata["pid"] = MetadataValue.text(str(orphan.pid))
    instance.report_engine_event(message, run, EngineEventData(metadata=metadata))
    if canceling:
        instance.report_run_canceled(run, message=message)
    else:
        instance.report_run_failed(run, message=message, job_failure_data=JobFailureData(
            error=None, failure_reason=RunFailureReason.UNEXPECTED_TERMINATION))
    if instance.event_log_storage.supports_global_concurrency_limits:
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
    log.info("%s run %s: %s", outcome, run.run_id, orphan.reason)
    return "CANCELED" if canceling else "FAILURE"


def _clock(ts: float | None) -> str:
    if ts is None:
        return "?"
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ts))
