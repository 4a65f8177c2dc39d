"""`verify()`: gather what the database, the webserver and the public URL say, concurrently, then
judge it. Network calls are bounded by `timeout_s`; nothing here prints or exits."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version as installed_version
from typing import TypeVar

from dagpg.errors import ConfigurationError, DagpgError
from dagpg.instance import Instance
from dagpg.settings import KitSettings
from dagpg.verify import access, checks, database, hints, webserver
from dagpg.verify.keeper import read_keepers
from dagpg.verify.report import Report
from dagpg.verify.services import (
    CURRENT_ENVIRONMENT,
    DAEMON,
    WEBSERVER,
    ServiceHome,
    listen_url,
    resolve_each,
    service_homes,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


def default_webserver_url(settings: KitSettings) -> str:
    ws = settings.webserver
    host = f"[{ws.host}]" if ":" in ws.host else ws.host
    prefix = "/" + ws.path_prefix.strip("/") if ws.path_prefix.strip("/") else ""
    return f"http://{host}:{ws.port}{prefix}"


def local_webservers(settings: KitSettings) -> list[tuple[str, str, str]]:
    """Every webserver the deployment runs, as (key, service name, URL on this machine): the one
    users open (`webserver`, read-only with dagpg.access) and, with dagpg.access, the operators'
    full one (`admin_webserver`, service dagpg.services.webserver)."""
    names, acc, ws = settings.services, settings.access, settings.webserver
    if not acc.enabled:
        return [("webserver", names.webserver, default_webserver_url(settings))]
    host = f"[{ws.host}]" if ":" in ws.host else ws.host
    admin = "/" + acc.admin_path_prefix.strip("/") if acc.admin_path_prefix.strip("/") else ""
    return [("admin_webserver", names.webserver, f"http://{host}:{acc.admin_port}{admin}"),
            ("webserver", names.read_only_webserver, default_webserver_url(settings))]


def verify(
    settings: KitSettings,
    *,
    dagster_home: str | os.PathLike | None = None,
    webserver_url: str | None = None,
    public_url: str | None = None,
    servy_configs: Sequence[str | os.PathLike] = (),
    heartbeat_max_age_s: float | None = None,
    backup_max_age_h: float | None = None,
    timeout_s: float | None = None,
    public_user: str | None = None,
) -> Report:
    """Check that the webserver and the daemon share one healthy instance.

    Raises ConfigurationError (bad URL, unreadable Servy config, no DAGSTER_HOME, no password);
    every other problem is a failed check in the report.
    """
    _check_limits(heartbeat_max_age_s=heartbeat_max_age_s, backup_max_age_h=backup_max_age_h,
                  timeout_s=timeout_s)
    started = time.monotonic()
    cfg = settings.verify
    max_age_s = heartbeat_max_age_s if heartbeat_max_age_s is not None else cfg.heartbeat_max_age_s
    max_age_h = backup_max_age_h if backup_max_age_h is not None else cfg.backup_max_age_h
    timeout = timeout_s if timeout_s is not None else cfg.timeout_s
    services = service_homes(settings, servy_configs, dagster_home)
    web_url = (webserver_url or listen_url(services[WEBSERVER])
               or default_webserver_url(settings))
    web_base = webserver.BaseUrl.parse(web_url, option="--webserver-url")
    public_base = (webserver.BaseUrl.parse(public_url, option="--public-url")
                   if public_url else None)
    authorization = access.basic_authorization(public_user)  # through the proxy's login
    # With --public-url the deployment is checked: with dagpg.access, the operators' webserver
    # too, which must serve the same instance (else operators launch into another history).
    admin_base = (access.paths(settings, public_base).admin_direct if public_base else None)

    resolved = resolve_each(services)
    instance = _primary(services[DAEMON], resolved[DAEMON])

    with ThreadPoolExecutor(max_workers=5, thread_name_prefix="verify") as pool:
        db_future = (pool.submit(database.observe, instance, timeout=timeout)
                     if instance else None)
        web_future = pool.submit(webserver.observe, web_base, timeout=timeout)
        public_future = (pool.submit(webserver.observe, public_base, timeout=timeout,
                                     websocket=True, authorization=authorization)
                         if public_base else None)
        admin_future = (pool.submit(webserver.observe, admin_base, timeout=timeout)
                        if admin_base else None)
        db = db_future.result() if db_future else None
        backup_future = pool.submit(_observe_backup, instance) if db and db.reachable else None
        disk_future = (pool.submit(_observe_disk, instance, settings, db.reachable, timeout)
                       if instance and db else None)
        web = web_future.result()
        public = public_future.result() if public_future else None
        admin = admin_future.result() if admin_future else None
        backup = backup_future.result() if backup_future else None
        disk = disk_future.result() if disk_future else None

    if db and db.reachable:
        _reread_if_needed(instance, db, [w for w in (web, public, admin) if w], timeout)
        if db.status and db.status.at_head:
            _required_daemons(instance, db, web, services[DAEMON], resolved)

    required = db.required_daemons if db else None
    dagster = installed_version("dagster")
    web_hint = webserver_hint(services[WEBSERVER].name, web_base)
    public_hint = ("a 502 from the proxy means the webserver is down or on another port; "
                   "check the proxy's rule and the webserver")
    results = [
        checks.same_home(services, resolved),
        checks.database(instance, db),
        checks.daemon_heartbeats(db, max_age_s, services[DAEMON]),
        checks.server_info("webserver", "Webserver answers", web, dagster, web_hint),
        checks.instance_id("webserver", "Webserver instance", web, db),
        checks.heartbeats_match("webserver", "Webserver heartbeats", web, db, required),
        checks.definitions(web),
        *_operators_webserver_checks(admin, db, dagster, settings.services.webserver),
        checks.server_info("public", "Public URL answers", public, dagster, public_hint),
        checks.instance_id("public", "Public page", public, db),
        checks.heartbeats_match("public", "Public GraphQL", public, db, required),
        checks.websocket("Public WebSocket", public),
        checks.schedules(web, cfg.schedules, start=lambda names: hints.schedule_start(
            names, services[WEBSERVER], instance.home if instance else None)),
        checks.backup(backup, max_age_h),
        checks.keeper(_observe_keeper(instance, settings)
                      if db and db.reachable and db.status and db.status.at_head else None),
        checks.disk(disk, settings.retention),
    ]
    if public_base:  # who gets through the proxy, and past it
        results += access.checks(settings, public_base, timeout=timeout,
                                 authorization=authorization, ports=(web_base.port,))
    return Report(
        checks=results,
        elapsed_s=time.monotonic() - started,
        instance=instance.as_dict() if instance else None,
        services={role: s.as_dict() for role, s in services.items()},
    )


def _operators_webserver_checks(admin: webserver.WebObservation | None,
                                db: database.DbObservation | None, dagster: str,
                                service: str) -> list[checks.CheckResult]:
    """The operators' full webserver (dagpg.access), asked directly on its port: it answers and
    serves the database's instance. None when there is none to ask (no --public-url, or access
    control off)."""
    if admin is None:
        return []
    return [
        checks.server_info("admin_webserver", "Operators' webserver", admin, dagster,
                           webserver_hint(service, admin.base)),
        checks.instance_id("admin_webserver", "Operators' instance", admin, db),
    ]


_LIMITS = {"heartbeat_max_age_s": ("--max-heartbeat-age", "seconds"),
           "backup_max_age_h": ("--max-backup-age", "hours"),
           "timeout_s": (None, "seconds")}


def _check_limits(**given: float | None) -> None:
    """A limit of 0 or less would fail every check: refuse it (config.yml's own limits are
    checked when it is read)."""
    for name, value in given.items():
        if value is not None and not value > 0:  # also refuses NaN
            option, unit = _LIMITS[name]
            raise ConfigurationError(
                f"{name}{f' ({option})' if option else ''} must be greater than 0, not "
                f"{value:g}; give a number of {unit}")
# -- single checks, for the keeper (`dagpg watch`) ---------------------------------------

def webserver_hint(name: str, base: webserver.BaseUrl) -> str:
    return (f"is dagster-webserver ({name}) running on {base.host}:{base.port}? check its "
            "stdout/stderr logs")


def heartbeat_check(instance: Instance, daemon: ServiceHome, *, max_age_s: float,
                    timeout: float, required: Sequence[str] | None
                    ) -> tuple[checks.CheckResult, database.DbObservation]:
    """The daemon-heartbeats check alone: read the database, judge every required daemon.
    `required`: Dagster's list for this instance (None: load it here, ~1 s)."""
    db = database.observe(instance, timeout=timeout)
    if db.reachable and db.status and db.status.at_head:
        if required is None:
            db.required_daemons, db.required_error = database.required_daemon_types(
                instance, daemon.environment)
        else:
            db.required_daemons = list(required)
        db.required_from = "dagster.yaml"
    return checks.daemon_heartbeats(db, max_age_s, daemon), db


def webserver_check(url: str, name: str, *, timeout: float
                    ) -> tuple[checks.CheckResult, webserver.WebObservation]:
    """The webserver-answers check alone: `<url>/server_info` within `timeout`."""
    base = webserver.BaseUrl.parse(url, option="the webserver URL")
    web = webserver.observe(base, timeout=timeout, info_only=True)
    result = checks.server_info("webserver", "Webserver answers", web,
                                installed_version("dagster"), webserver_hint(name, base))
    return result, web


def _observe_keeper(instance: Instance | None, settings: KitSettings) -> checks.KeeperObservation:
    rows, error = _attempt("reading the keeper's heartbeat", lambda: read_keepers(instance))
    log = settings.resolve(settings.watch.log_dir) / settings.watch.LOG_FILE
    return checks.KeeperObservation(rows=rows or [], error=error,
                                    service=settings.services.keeper, log=str(log))


def _attempt(doing: str, read: Callable[[], T]) -> tuple[T | None, str | None]:
    """(read(), None), or (None, the error in one line): an observation's own failure becomes a
    finding of its check, not a crash of verify."""
    try:
        return read(), None
    except DagpgError as exc:
        return None, str(exc)
    except Exception as exc:  # noqa: BLE001  (a check, not a crash)
        log.debug("%s failed", doing, exc_info=True)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return None, f"{doing} failed: {first}"


def _primary(daemon: ServiceHome, resolved: Instance | DagpgError) -> Instance | None:
    """The instance whose database is checked: the daemon's, with the password it would use.

    A DAGSTER_HOME from the current environment that cannot be resolved is a usage error (exit
    2); one from a Servy config is reported by the same-home check instead. A missing password
    is always a usage error.
    """
    if daemon.source != CURRENT_ENVIRONMENT and isinstance(resolved, DagpgError):
        return None
    return daemon.resolve(require_password=True)


def _required_daemons(instance: Instance, db: database.DbObservation,
                      web: webserver.WebObservation, daemon: ServiceHome,
                      resolved: dict[str, Instance | DagpgError]) -> None:
    """Dagster's list of required daemons for this instance. A webserver that serves this
    instance from the same DAGSTER_HOME has computed it already (GraphQL lists exactly the
    required daemons); otherwise load the instance here (importing Dagster: ~1 s)."""
    homes = {r.home for r in resolved.values() if isinstance(r, Instance)}
    statuses = checks.daemon_statuses(web.status or {})
    if (web.page and web.page.instance_id == db.run_storage_id and homes == {instance.home}
            and statuses and all(s.get("required") for s in statuses)):
        db.required_daemons = [s["daemonType"] for s in statuses]
        db.required_from = "webserver"
        return
    db.required_daemons, db.required_error = database.required_daemon_types(
        instance, daemon.environment)
    db.required_from = "dagster.yaml"


def _observe_backup(instance: Instance) -> checks.BackupObservation:
    from dagpg.backup.catalog import latest_backup

    backup, error = _attempt("reading the backup catalog", lambda: latest_backup(instance))
    return checks.BackupObservation(backup=backup, error=error)


def _reread_if_needed(instance: Instance, db: database.DbObservation,
                      webs: list[webserver.WebObservation], timeout: float) -> None:
    """A heartbeat may land between our read and the webserver's, and the webserver writes the
    instance id on its first page: read the database once more when they disagree."""
    def disagrees(web: webserver.WebObservation) -> bool:
        if web.page and web.page.instance_id != db.run_storage_id:
            return True
        statuses = checks.daemon_statuses(web.status or {})
        return bool(checks.compare_heartbeats(statuses, db.heartbeat_reads, None))

    if any(disagrees(w) for w in webs):
        try:
            database.reread(instance, db, timeout=timeout)
        except DagpgError as exc:
            log.debug("re-reading the database failed: %s", exc)


def _observe_disk(instance: Instance, settings: KitSettings, reachable: bool,
                  timeout: float) -> checks.DiskObservation:
    """Free space and days left (dagpg.prune.disk); the local folders even without the database."""
    from dagpg import pg
    from dagpg.prune.disk import locations

    def measure() -> list:
        if not reachable:
            return locations(instance, settings)
        with pg.connection(instance.target, timeout=timeout) as conn:
            return locations(instance, settings, conn)

    found, error = _attempt("measuring the disks", measure)
    return checks.DiskObservation(found or [], error=error)
