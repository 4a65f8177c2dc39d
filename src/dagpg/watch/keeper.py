"""One keeper: startup checks, then passes. A pass judges with `dagpg verify`'s own checks
(daemon heartbeats, webserver answers), acts through the service manager after a finding
repeats (`failures_before_restart` passes), within a restart budget, and ends runs whose worker
is gone through Dagster's API. Only the holder of the advisory lock acts.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from dagpg import schema
from dagpg.errors import (
    AuthenticationError,
    ConfigurationError,
    DagpgError,
    DatabaseUnavailableError,
)
from dagpg.instance import Instance, resolve_instance
from dagpg.services import ServiceManager, manager_for
from dagpg.settings import KitSettings
from dagpg.verify import checks
from dagpg.verify.runner import heartbeat_check, local_webservers, webserver_check
from dagpg.verify.services import CURRENT_ENVIRONMENT, DAEMON, WEBSERVER, ServiceHome
from dagpg.verify.webserver import BaseUrl
from dagpg.watch import orphans
from dagpg.watch.errors import WatchConfigurationError
from dagpg.watch.events import ERROR, INFO, WARNING, Event, PassResult, first_line
from dagpg.watch.jsonlog import JsonLog
from dagpg.watch.restarts import Restarts, Watched
from dagpg.watch.store import Store, read_keepers, this_host

log = logging.getLogger(__name__)


class Keeper:
    """`start()` once (raises ConfigurationError on bad config), then `run_pass()` each
    interval, `close()` at the end."""

    def __init__(self, settings: KitSettings, *, dagster_home=None,
                 manager: ServiceManager | None = None, once: bool = False,
                 emit: Callable[[Event], None] | None = None,
                 sleep: Callable[[float], None] = time.sleep):
        self.settings = settings
        self.cfg = settings.watch
        self.dagster_home = dagster_home
        self.manager = manager
        self.once = once
        self.emit = emit or (lambda _e: None)
        self.sleep = sleep
        self.instance: Instance | None = None
        self.store: Store | None = None
        self.log: JsonLog | None = None
        self.watched: dict[str, Watched] = {}
        self.restarts: Restarts | None = None
        self.started_at = datetime.now(UTC)
        self.passes = 0
        self.acting = False
        self._stack = contextlib.ExitStack()
        self._dagster = None
        self._orphans: orphans.OrphanHandler | None = None
        self._required: list[str] | None = None
        self._last_standby: str | None = None
        self._db_down = False

    # -- startup -----------------------------------------------------------------------

    def start(self) -> list[str]:
        """Check everything that would stop the keeper from acting; say what it watches."""
        self.instance = resolve_instance(self.dagster_home, require_password=True)
        self.manager = self.manager or manager_for(self.settings)
        names = self.settings.services
        webservers = local_webservers(self.settings)
        self.manager.check(
            [*(name for _, name, _ in webservers), names.daemon],
            hints={names.read_only_webserver: "dagpg.access is enabled, so the viewers' "
                   "read-only webserver is a service of its own; with one webserver, set "
                   "dagpg.access.enabled: false"} if self.settings.access.enabled else None)
        self.log = JsonLog(self.settings.resolve(self.cfg.log_dir),
                           max_bytes=self.cfg.log_max_bytes, backups=self.cfg.log_backups)
        self.store = Store(self.instance, timeout=min(self.cfg.webserver_timeout_s, 10))
        self.web_urls = {}
        for key, _, url in webservers:
            BaseUrl.parse(url, option="dagpg.webserver / dagpg.access in config.yml")
            self.web_urls[key] = url
        self._require_keeper_tables()
        self.restarts = Restarts(self.cfg, self.store, self.manager, once=self.once)
        self.watched = {
            DAEMON: Watched(
                DAEMON, names.daemon,
                f"every required daemon's heartbeat younger than {self.cfg.heartbeat_max_age_s:g} s",
                self.manager.describe(names.daemon)),
        }
        for key, name, url in webservers:
            self.watched[key] = Watched(
                WEBSERVER, name,
                f"{url}/server_info answers within {self.cfg.webserver_timeout_s:g} s",
                self.manager.describe(name))
        self._restore_state()
        lines = [
            f"dagpg watch: keeper of {self.instance.target.url()} (DAGSTER_HOME="
            f"{self.instance.home}) on {this_host()}, a pass every {self.cfg.interval_s:g} s"
            + (" (once)" if self.once else ""),
        ]
        for w in self.watched.values():
            lines.append(f"  {w.role} {w.name}: {w.what}; after {self.cfg.failures_before_restart} "
                         f"failed passes, at most {self.cfg.max_restarts_per_hour} times an hour: "
                         f"{w.restart}")
        lines.append("  runs: STARTING, STARTED or CANCELING runs whose run worker is gone from "
                     "this host are marked failed (canceled) through Dagster")
        lines.append(f"  log: {self.log.path}")
        self._write(Event("startup", INFO, "; ".join(x.strip() for x in lines[1:]),
                          data={"instance": self.instance.target.url(), "host": this_host(),
                                "interval_s": self.cfg.interval_s, "once": self.once,
                                "service_manager": self.manager.kind,
                                "services": {key: {"name": w.name, "restart": w.restart}
                                             for key, w in self.watched.items()}}))
        return lines

    def _require_keeper_tables(self) -> None:
        """The keeper's tables come with `dagpg db upgrade`; a database that is down now is
        not a configuration error (PostgreSQL may start after the keeper at boot)."""
        try:
            read_keepers(self.instance, timeout=self.store.timeout, host=this_host())
        except AuthenticationError:
            raise
        except DatabaseUnavailableError:
            return
        except DagpgError as exc:
            if "does not exist" in str(exc):
                raise WatchConfigurationError(
                    f"the keeper's tables are missing in {self.instance.target.url()} (dagpg "
                    "schema not at head): run `dagpg db upgrade`") from None

    def _restore_state(self) -> None:
        """Consecutive findings survive a restart of the keeper (and `--once` runs) when its
        last pass on this host is recent."""
        try:
            row = self.store.load_row()
        except DagpgError:
            return
        if row is None or row.age_s() > 3 * max(row.interval_s, self.cfg.interval_s):
            return
        for role, count in (row.state.get("counts") or {}).items():
            if role in self.watched:
                self.watched[role].count = int(count)

    # -- a pass ------------------------------------------------------------------------

    def run_pass(self) -> PassResult:
        """One pass. Never raises for what it finds: a failure of its own is an error event."""
        began = time.monotonic()
        self.passes += 1
        events: list[Event] = []
        results: list[checks.CheckResult] = []
        try:
            return self._pass(began, events, results)
        except Exception as exc:  # noqa: BLE001  (the keeper must outlive its own bugs)
            log.warning("pass %d failed", self.passes, exc_info=True)
            events.append(Event("error", ERROR, f"the pass failed: {type(exc).__name__}: "
                                f"{first_line(exc)}; the next pass tries again"))
            return self._finish(began, events, results)

    def _pass(self, began: float, events: list[Event], results: list) -> PassResult:
        try:
            self.acting = self.store.hold_lock()
            if self.store.took_over:
                events.append(Event("took_over", WARNING, f"took over the keeper lock: "
                                    f"{self.store.took_over}"))
            if self._db_down:
                events.append(Event("recovered", INFO, "the database answers again"))
                self._db_down = False
        except DagpgError as exc:
            self.acting = False
            if not self._db_down:
                events.append(Event("finding", ERROR, f"cannot reach the database: {exc}",
                                    target="database"))
            self._db_down = True
            return self._finish(began, events, results)
        if not self.acting:
            holder = self._holder()
            if holder != self._last_standby:
                events.append(Event("standby", INFO, f"another keeper acts: {holder}; "
                                    "this one only waits for the lock"))
                self._last_standby = holder
            return self._finish(began, events, results)
        self._last_standby = None

        results.append(self._judge_daemon(events))
        results.extend(self._judge_webserver(key, events) for key in self.web_urls)
        try:
            self._open_dagster()
        except DagpgError as exc:
            events.append(Event("finding", ERROR, str(exc), target="runs"))
        else:
            self._orphans.handle(events)
        try:
            self.store.save_row(started_at=self.started_at, interval_s=self.cfg.interval_s,
                                passes=self.passes, state=self._state())
        except DagpgError as exc:
            events.append(Event("finding", ERROR, f"cannot write the keeper's heartbeat: {exc}",
                                target="database"))
        return self._finish(began, events, results)

    def _finish(self, began: float, events: list[Event], results) -> PassResult:
        for event in events:
            self._write(event, number=self.passes)
        return PassResult(self.passes, self.acting, events, results,
                          time.monotonic() - began)

    def _state(self) -> dict[str, Any]:
        return {"counts": {r: w.count for r, w in self.watched.items()},
                "gave_up": self.gave_up}

    @property
    def gave_up(self) -> dict[str, dict[str, Any]]:
        """Services the keeper stopped restarting (its budget is spent)."""
        return self.restarts.gave_up if self.restarts else {}

    def _holder(self) -> str:
        try:
            return self.store.lock_holder()
        except DagpgError as exc:
            return f"unknown ({exc})"

    # -- daemon and webserver ------------------------------------------------------------

    def _judge_daemon(self, events: list[Event]) -> checks.CheckResult:
        w = self.watched[DAEMON]
        daemon = ServiceHome(DAEMON, w.name, CURRENT_ENVIRONMENT, str(self.instance.home))
        try:
            required = self._required_daemons()
        except DagpgError as exc:
            events.append(Event("finding", ERROR, f"{exc}; the daemon cannot be judged",
                                target=w.name))
            return checks.CheckResult("daemon.heartbeats", "Daemon heartbeats", checks.SKIP,
                                      str(exc))
        result, db = heartbeat_check(self.instance, daemon, max_age_s=self.cfg.heartbeat_max_age_s,
                                     timeout=self.cfg.webserver_timeout_s, required=required)
        if result.status == checks.SKIP or result.data.get("ages_s") is None:
            return result  # the database or Dagster's list is missing: nothing to judge
        self.restarts.judge(w, result.status == checks.FAIL, result.detail, result.data, events)
        return result

    def _judge_webserver(self, key: str, events: list[Event]) -> checks.CheckResult:
        w, url = self.watched[key], self.web_urls[key]
        result, web = webserver_check(url, w.name, timeout=self.cfg.webserver_timeout_s)
        # Only silence (refused, timed out) is a reason to restart. A webserver that answers,
        # but not as expected (HTTP 404 under another path prefix, another Dagster version),
        # is misconfigured: a restart would not help; say so, do not act.
        unanswered = web.info is None and web.unreachable
        if result.status == checks.FAIL and not unanswered:
            events.append(Event("finding", WARNING, result.detail, target=w.name))
            w.count = 0
            return result
        self.restarts.judge(w, unanswered, result.detail, {"url": f"{url}/server_info"},
                            events)
        return result

    def _required_daemons(self) -> list[str] | None:
        if self._required is None and self._open_dagster() is not None:
            self._required = list(self._dagster.get_required_daemon_types())
        return self._required

    # -- Dagster -----------------------------------------------------------------

    def _open_dagster(self):
        if self._dagster is None:
            try:
                self._dagster = self._stack.enter_context(
                    schema.open_dagster_instance(self.instance))
                finder = orphans.OrphanFinder(
                    self._dagster, starting_timeout_s=self.cfg.starting_timeout_s)
                self._orphans = orphans.OrphanHandler(
                    finder, self._dagster, self.store, settle_s=self.cfg.orphan_settle_s,
                    sleep=self.sleep)
            except Exception as exc:  # noqa: BLE001  (Dagster's own errors: a finding)
                log.debug("opening the Dagster instance failed", exc_info=True)
                raise ConfigurationError(f"Dagster cannot open {self.instance.yaml_path}: "
                                         f"{first_line(exc)}") from None
        return self._dagster

    # -- plumbing ----------------------------------------------------------------------

    def _write(self, event: Event, number: int | None = None) -> None:
        if self.log:
            self.log.write({"pid": self.store.pid if self.store else None, "pass": number,
                            **event.as_dict()})
        self.emit(event)

    def close(self) -> None:
        if self.log and self.passes:
            self._write(Event("stop", INFO, f"keeper stopped after {self.passes} passes"))
        if self.store:
            self.store.release()
        self._stack.close()
        if self.log:
            self.log.close()

