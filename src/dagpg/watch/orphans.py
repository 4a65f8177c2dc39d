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
A STARTING run with no worker yet is orphaned when it was launched before the boot, or when the
code server it was launched through (the `.dagster/grpc_info` tag) no longer accepts
connections: the launch waits while that code server starts the worker, so when both died
(the daemon's process tree killed, a staged reboot) no worker will ever report.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dagpg.errors import DagpgError
from dagpg.watch import procs
from dagpg.watch.events import ERROR, INFO, WARNING, Event, first_line
from dagpg.watch.store import this_host

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
            launcher = _launcher(run.tags)
            if status == "STARTING" and launcher and procs.code_server_gone(launcher):
                # The code server starts the worker while the launch waits for it, so a run
                # left STARTING by a code server that is gone (killed with the daemon) will
                # never get one. A worker that reports meanwhile (orphan_settle_s) is kept.
                where = launcher.get("socket") or f"{launcher.get('host')}:{launcher.get('port')}"
                return orphan(f"no run worker reported since the launch at {_clock(launched)}, "
                              f"and the code server that launched it ({where}) is gone",
                              code_server=launcher)
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


def _launcher(tags) -> dict | None:
    """The code server a run was launched through (DefaultRunLauncher's `.dagster/grpc_info`
    tag), or None."""
    from dagster._core.storage.tags import GRPC_INFO_TAG

    try:
        info = json.loads(tags.get(GRPC_INFO_TAG) or "null")
    except ValueError:
        return None
    return info if isinstance(info, dict) else None


def _clock(ts: float | None) -> str:
    if ts is None:
        return "?"
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ts))


class OrphanHandler:
    """Ends the runs an OrphanFinder finds, once Dagster has had `settle_s` to do it itself."""

    def __init__(self, finder: OrphanFinder, instance: DagsterInstance, store, *, settle_s: float,
                 sleep):
        self._finder = finder
        self._dagster = instance
        self.store = store
        self.settle_s = settle_s
        self.sleep = sleep
        self._gone_since: dict[str, float] = {}
        self._leaks_reported: set[str] = set()

    def handle(self, events: list[Event]) -> None:
        """Find orphaned runs and end them; what it did goes into `events`."""
        try:
            found = self._finder.find()
        except DagpgError as exc:
            events.append(Event("finding", ERROR, str(exc), target="runs"))
            return
        except Exception as exc:  # noqa: BLE001  (a storage hiccup: try again next pass)
            log.debug("reading runs failed", exc_info=True)
            events.append(Event("finding", ERROR, f"reading runs failed: {first_line(exc)}",
                                target="runs"))
            return
        now = time.time()
        live = {o.run_id for o in found}
        self._gone_since = {k: v for k, v in self._gone_since.items() if k in live}
        settling = [o for o in found if not o.before_boot]
        for o in settling:
            self._gone_since.setdefault(o.run_id, now)
        if settling:
            # Dagster's code server fails a run whose worker died alone within about a second;
            # give it orphan_settle_s from when the keeper first saw the worker gone.
            wait = max(self._gone_since[o.run_id] for o in settling) + self.settle_s
            if wait > time.time():
                self.sleep(wait - time.time())
        for o in found:
            self._end(o, events)
        self._report_leaked_slots(events)

    def _report_leaked_slots(self, events: list[Event]) -> None:
        """A run Dagster failed itself (its worker killed alone) keeps its pool slots; Dagster
        frees them only with run_monitoring.free_slots_after_run_end_seconds. Without it, say
        so once per run (the keeper does not act on Dagster's runs)."""
        from dagster import RunsFilter
        from dagster._core.storage.dagster_run import FINISHED_STATUSES

        dagster = self._dagster
        storage = dagster.event_log_storage
        if (dagster.run_monitoring_enabled
                and dagster.run_monitoring_settings.get("free_slots_after_run_end_seconds")) \
                or not storage.supports_global_concurrency_limits:
            return
        run_ids = storage.get_concurrency_run_ids() - self._leaks_reported
        if not run_ids:
            return
        for record in dagster.get_run_records(RunsFilter(run_ids=sorted(run_ids),
                                                         statuses=FINISHED_STATUSES)):
            run = record.dagster_run
            self._leaks_reported.add(run.run_id)
            events.append(Event(
                "finding", WARNING,
                f"run {run.run_id} ({run.status.value}) ended but still holds pool slots, so "
                "steps of other runs in those pools wait: set run_monitoring: {enabled: true, "
                "free_slots_after_run_end_seconds: 300} in dagster.yaml and Dagster frees them",
                target=run.run_id))

    def _end(self, o: Orphan, events: list[Event]) -> None:
        if not self._finder.still_active(o.run_id):
            return  # Dagster ended it meanwhile (its code server saw the worker die)
        worker = self._finder.worker(o.run_id)
        if worker.reported_by_dagster:
            return
        if not o.before_boot and worker.pid is not None and \
                procs.identity(worker.pid, worker.named_at) != procs.GONE:
            return
        who = f"dagpg watch, pid {self.store.pid} on {this_host()}"
        try:
            status = end_run(self._dagster, o, who=who)
        except Exception as exc:  # noqa: BLE001
            log.debug("ending run %s failed", o.run_id, exc_info=True)
            events.append(Event("action", ERROR, f"could not end run {o.run_id}: "
                                f"{first_line(exc)}", target=o.run_id, data=o.as_dict()))
            return
        kind = "cancel_run" if status == "CANCELED" else "fail_run"
        try:
            self.store.record_action(kind, o.run_id, True, o.as_dict())
        except DagpgError as exc:
            log.warning("could not record ending run %s: %s", o.run_id, exc)
        self._gone_since.pop(o.run_id, None)
        events.append(Event("action", INFO, f"run {o.run_id} ({o.job_name}, {o.status}) marked "
                            f"{status}: {o.reason}", target=o.run_id,
                            data={**o.as_dict(), "now": status}))

