"""When the keeper restarts a service: a finding on `failures_before_restart` passes in a row,
not within `restart_grace_s` of a start, only while the service runs, with a backoff between
restarts and at most `max_restarts_per_hour` (counted in the database), then it gives up loudly:
Kubernetes' failureThreshold and CrashLoopBackOff, systemd's StartLimitBurst.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from dagpg.errors import DagpgError
from dagpg.services import ServiceManager
from dagpg.settings import Watch
from dagpg.watch.events import ERROR, INFO, WARNING, Event
from dagpg.watch.store import Store

log = logging.getLogger(__name__)

HOUR = timedelta(hours=1)


@dataclass
class Watched:
    role: str  # daemon | webserver
    name: str  # the service's name for the manager
    what: str  # what is judged, for the startup description
    restart: str  # the command that restarts it
    count: int = 0  # consecutive passes with a finding
    last_restart: float | None = None


class Restarts:
    """The restart policy for the watched services of one keeper."""

    def __init__(self, cfg: Watch, store: Store, manager: ServiceManager, *, once: bool):
        self.cfg = cfg
        self.store = store
        self.manager = manager
        self.once = once
        self.started = time.time()
        self.gave_up: dict[str, dict[str, Any]] = {}

    def judge(self, w: Watched, failing: bool, detail: str, data: dict[str, Any],
              events: list[Event]) -> None:
        """Count a finding (or clear it) and restart `w` when the policy allows."""
        if not failing:
            if w.count or w.name in self.gave_up:
                events.append(Event("recovered", INFO, f"{w.role} healthy again: {detail}",
                                    target=w.name))
            w.count = 0
            self.gave_up.pop(w.name, None)
            return
        if self._in_grace(w):
            return  # just (re)started: not judged yet, nothing to say
        w.count += 1
        need = self.cfg.failures_before_restart
        events.append(Event("finding", WARNING, f"{detail} ({min(w.count, need)} of {need} "
                            "passes)", target=w.name, data=data))
        if w.count < need:
            return
        self._maybe_restart(w, events)

    def _maybe_restart(self, w: Watched, events: list[Event]) -> None:
        now = time.time()
        try:
            restarts = [t.timestamp() for t in self.store.restarts_since(
                w.name, datetime.now(UTC) - HOUR)]
        except DagpgError as exc:
            events.append(Event("finding", ERROR, f"cannot read the restart budget: {exc}",
                                target=w.name))
            return
        if restarts:
            w.last_restart = max(restarts[-1], w.last_restart or 0)
        budget = self.cfg.max_restarts_per_hour
        if len(restarts) >= budget:
            if w.name not in self.gave_up:
                self.gave_up[w.name] = {"since": datetime.now(UTC).isoformat(),
                                        "restarts": len(restarts)}
                events.append(Event(
                    "gave_up", ERROR,
                    f"{w.name} restarted {len(restarts)} times in the last hour "
                    f"(dagpg.watch.max_restarts_per_hour: {budget}) and still fails: the keeper "
                    "stops restarting it; find the cause in its log, fix it, restart it by hand",
                    target=w.name, data={"restarts": len(restarts)}))
            return
        # The budget allows a restart again (an hour has passed): it acts again, so a second
        # give-up is reported as loudly as the first.
        self.gave_up.pop(w.name, None)
        grace = self.cfg.restart_grace_s
        if w.last_restart is not None:
            wait = grace * 2 ** (len(restarts) - 1) if restarts else grace
            if now - w.last_restart < wait:
                events.append(Event("waiting", INFO,
                                    f"restarted {now - w.last_restart:.0f} s ago; next restart "
                                    f"no sooner than {wait:g} s after it (backoff)",
                                    target=w.name))
                return
        state = self.manager.status(w.name)
        if not state.running:
            events.append(Event("waiting", WARNING,
                                f"{w.name} is {state.status} ({state.detail}): the keeper "
                                "restarts only running services (a stopped one was stopped on "
                                "purpose, a crashed one is restarted by the service manager)",
                                target=w.name))
            return
        result = self.manager.restart(w.name)
        w.last_restart = time.time()
        w.count = 0
        try:
            self.store.record_action("restart", w.name, result.ok, result.as_dict())
        except DagpgError as exc:
            log.warning("could not record the restart of %s: %s", w.name, exc)
        level = INFO if result.ok else ERROR
        outcome = "restarted" if result.ok else "restart FAILED"
        events.append(Event("action", level,
                            f"{outcome}: {w.name} ({result.command}: {result.detail}; "
                            f"{result.elapsed_s:.1f} s), restart {len(restarts) + 1} of at most "
                            f"{budget} an hour", target=w.name, data=result.as_dict()))

    def _in_grace(self, w: Watched) -> bool:
        """A service gets restart_grace_s after the keeper starts (services start with it at
        boot) and after the keeper restarts it, before a finding counts."""
        now, grace = time.time(), self.cfg.restart_grace_s
        if not self.once and now - self.started < grace:
            return True
        return w.last_restart is not None and now - w.last_restart < grace
