"""Each check turns observations into one result: a name, a status and a one-line detail.

Statuses: ok; warn (worth a look, does not stop schedules from firing: passes); fail; skip (not
run: not asked for, not available yet, or a check it depends on already failed).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from dagpg import wording
from dagpg.errors import DagpgError
from dagpg.heartbeats import Heartbeat
from dagpg.instance import Instance
from dagpg.verify.database import DbObservation
from dagpg.verify.services import CURRENT_ENVIRONMENT, DAEMON, WEBSERVER, ServiceHome
from dagpg.verify.webserver import WebObservation

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"
_SAME_TIME_S = 0.002  # the database keeps microseconds; GraphQL gives the same float


@dataclass(frozen=True)
class CheckResult:
    name: str
    title: str
    status: str
    detail: str
    data: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "title": self.title, "status": self.status,
               "detail": self.detail}
        if self.data:
            out["data"] = self.data
        return out


# -- 1. same home ------------------------------------------------------------------------

def same_home(services: dict[str, ServiceHome],
              resolved: dict[str, Instance | DagpgError]) -> CheckResult:
    name, title = "same_home", "Same home"
    web, daemon = services[WEBSERVER], services[DAEMON]
    data = {role: {**services[role].as_dict(), **_target(resolved[role])} for role in services}
    errors = [str(resolved[r]) for r in services if isinstance(resolved[r], DagpgError)]
    if errors:
        return CheckResult(name, title, FAIL, "; ".join(errors), data)
    wi, di = resolved[WEBSERVER], resolved[DAEMON]
    if wi.target.identity() != di.target.identity():
        return CheckResult(
            name, title, FAIL,
            f"{web.name} uses {wi.target.url()} (DAGSTER_HOME={wi.home}, {web.source}) but "
            f"{daemon.name} uses {di.target.url()} (DAGSTER_HOME={di.home}, {daemon.source}); "
            "set the same DAGSTER_HOME in both services' environments", data)
    others = [services[r] for r in services if r not in (WEBSERVER, DAEMON)]
    for other in others:  # the read-only webserver, when its Servy config was given
        oi = resolved[other.role]
        if oi.target.identity() != di.target.identity():
            return CheckResult(
                name, title, FAIL,
                f"{other.name} uses {oi.target.url()} (DAGSTER_HOME={oi.home}, {other.source}) "
                f"but {daemon.name} uses {di.target.url()} (DAGSTER_HOME={di.home}); set the "
                "same DAGSTER_HOME in every service's environment", data)
    if web.source == daemon.source == CURRENT_ENVIRONMENT:
        return CheckResult(
            name, title, OK,
            f"both services from the current environment: DAGSTER_HOME={di.home} -> "
            f"{di.target.url()} (give --servy-config to check the services' own settings)", data)
    for other, oi in ((web, wi), *((o, resolved[o.role]) for o in others)):
        if oi.home != di.home:
            return CheckResult(
                name, title, WARN,
                f"same database {di.target.url()}, but different folders: "
                f"DAGSTER_HOME={oi.home} ({other.name}) and {di.home} ({daemon.name}); compute "
                "logs may not show in the UI; use one DAGSTER_HOME", data)
    return CheckResult(name, title, OK,
                       f"{', '.join(s.name for s in (web, *others))} and {daemon.name}: "
                       f"DAGSTER_HOME={di.home} -> {di.target.url()}", data)


def _target(resolved: Instance | DagpgError) -> dict[str, Any]:
    if isinstance(resolved, DagpgError):
        return {"error": str(resolved)}
    return {"url": resolved.target.url(), "identity": list(resolved.target.identity())}


# -- 2. database -------------------------------------------------------------------------

def database(instance: Instance | None, db: DbObservation | None) -> CheckResult:
    name, title = "database", "Database"
    if instance is None or db is None:
        return CheckResult(name, title, SKIP, "no instance to check: see same home")
    url = instance.target.url()
    if db.error:
        return CheckResult(name, title, FAIL, db.error, {"url": url})
    status = db.status
    data = {"url": url, "server_version": db.server_version, **status.as_dict()}
    if not status.dagster_at_head:
        from dagpg.upgrade.hints import dagster_schema_hint  # only when needed: reads files

        return CheckResult(
            name, title, FAIL,
            f"Dagster schema at {status.dagster_current or 'nothing'}, not head "
            f"{status.dagster_head}: {dagster_schema_hint(instance, status.dagster_current)}",
            data)
    if not status.kit_at_head:
        return CheckResult(
            name, title, FAIL,
            f"dagpg schema at {status.kit_current or 'nothing'}, not head {status.kit_head}: "
            "run `dagpg db upgrade`", data)
    return CheckResult(
        name, title, OK,
        f"{url} answers (PostgreSQL {db.server_version}); Dagster schema {status.dagster_head} "
        f"and dagpg schema {status.kit_head} at head", data)


# -- 3. daemon heartbeats ----------------------------------------------------------------

def daemon_heartbeats(db: DbObservation | None, max_age_s: float, daemon: ServiceHome,
                      now: datetime | None = None) -> CheckResult:
    name, title = "daemon.heartbeats", "Daemon heartbeats"
    if db is None or not db.reachable or db.status is None or not db.status.at_head:
        return CheckResult(name, title, SKIP, "needs the database: see database")
    if db.required_daemons is None:
        return CheckResult(name, title, FAIL, db.required_error or "required daemons unknown")
    now = now or datetime.now(UTC)
    beats = {h.daemon_type: h for h in db.heartbeats}
    ages = {t: round(beats[t].age_s(now), 1) for t in db.required_daemons if t in beats}
    data = {"required": db.required_daemons, "required_from": db.required_from,
            "ages_s": ages, "max_age_s": max_age_s}
    missing = [t for t in db.required_daemons if t not in beats]
    stale = {t: a for t, a in ages.items() if a > max_age_s}
    hint = (f"is dagster-daemon running ({daemon.name}) with the same DAGSTER_HOME? "
            "Check its stderr log")
    if missing:
        return CheckResult(name, title, FAIL,
                           f"no heartbeat from {', '.join(missing)}: {hint}", data)
    if stale:
        listed = ", ".join(f"{t} {a:.0f} s ago" for t, a in sorted(stale.items()))
        return CheckResult(name, title, FAIL,
                           f"stale heartbeats: {listed} (limit {max_age_s:g} s): {hint}", data)
    oldest = max(ages.values(), default=0.0)
    return CheckResult(
        name, title, OK,
        f"all {len(ages)} required daemons ({', '.join(sorted(ages))}) beat within "
        f"{max_age_s:g} s (oldest {oldest:.0f} s ago)", data)


# -- 4/5. webserver and public URL -------------------------------------------------------

def server_info(prefix: str, title: str, web: WebObservation | None, installed: str,
                hint: str) -> CheckResult:
    name = f"{prefix}.server_info"
    if web is None:
        return CheckResult(name, title, SKIP, "no --public-url given")
    url = web.base.url("/server_info")
    if web.login_required:
        return CheckResult(name, title, SKIP, _login_hint(web), {"url": url})
    if web.info_error:
        if " answered HTTP 404" in web.info_error:
            hint = ("is the path prefix right? (the URL's path must be dagster-webserver's "
                    "--path-prefix)")
        return CheckResult(name, title, FAIL, f"{web.info_error}; {hint}",
                           {"url": url, "unreachable": web.unreachable})
    version = web.info.get("dagster_version")
    data = {"url": url, **web.info}
    if version != installed:
        return CheckResult(
            name, title, FAIL,
            f"{url} runs Dagster {version}, this environment has {installed}: both services "
            "must run the same Dagster installation", data)
    return CheckResult(name, title, OK, f"{url} runs Dagster {version}", data)


def _unreachable(name: str, title: str, web: WebObservation | None) -> CheckResult | None:
    if web is None:
        return CheckResult(name, title, SKIP, "no --public-url given")
    if web.unreachable:
        return CheckResult(name, title, SKIP, f"{web.base.url()} does not answer: see above")
    if web.login_required:
        return CheckResult(name, title, SKIP, _login_hint(web))
    return None


def _login_hint(web: WebObservation) -> str:
    return (f"{web.base.url()} asks for a login (HTTP 401), as access control wants: give "
            "--public-user NAME (password in DAGPG_PUBLIC_PASSWORD) to check through it")


def instance_id(prefix: str, title: str, web: WebObservation | None,
                db: DbObservation | None) -> CheckResult:
    name = f"{prefix}.instance_id"
    if skipped := _unreachable(name, title, web):
        return skipped
    url = web.base.url("/")
    if web.page_error:
        return CheckResult(name, title, FAIL, web.page_error, {"url": url})
    page = web.page
    data = {"url": url, "instance_id": page.instance_id, "path_prefix": page.path_prefix}
    if page.path_prefix != web.base.prefix:
        fix = (f"start dagster-webserver with --path-prefix {web.base.prefix} and make the "
               "proxy keep the prefix" if web.base.prefix else
               f"use {web.base.url(page.path_prefix)} or start dagster-webserver without "
               "--path-prefix")
        return CheckResult(
            name, title, FAIL,
            f"the page at {url} says its path prefix is {page.path_prefix or ''!r}, but it is "
            f"served under {web.base.prefix or '/'!r}: {fix}", data)
    if db is None or not db.reachable:
        return CheckResult(name, title, SKIP,
                           f"page serves instance {page.instance_id}; needs the database to "
                           "compare: see database", data)
    data["database_instance_id"] = db.run_storage_id
    if page.instance_id != db.run_storage_id:
        return CheckResult(
            name, title, FAIL,
            f"the webserver serves instance {page.instance_id or '(none)'}, the database holds "
            f"{db.run_storage_id or '(none)'}: it reads another database; set the same "
            "DAGSTER_HOME in both services and restart the webserver", data)
    return CheckResult(name, title, OK,
                       f"the page serves instance {page.instance_id}, the same as the database",
                       data)


def heartbeats_match(prefix: str, title: str, web: WebObservation | None,
                     db: DbObservation | None, required: Sequence[str] | None) -> CheckResult:
    name = f"{prefix}.heartbeats"
    if skipped := _unreachable(name, title, web):
        return skipped
    if web.status_error:
        return CheckResult(name, title, FAIL, web.status_error)
    statuses = daemon_statuses(web.status)
    if db is None or not db.reachable:
        return CheckResult(name, title, SKIP, "needs the database to compare: see database")
    mismatches = compare_heartbeats(statuses, db.heartbeat_reads, required)
    data = {"webserver": {s["daemonType"]: s.get("lastHeartbeatTime") for s in statuses}}
    if mismatches:
        return CheckResult(
            name, title, FAIL,
            f"the webserver's GraphQL disagrees with the database: {'; '.join(mismatches)}: it "
            "reads another instance; set the same DAGSTER_HOME in both services", data)
    timed = [s for s in statuses if s.get("lastHeartbeatTime") is not None]
    if not timed:
        return CheckResult(name, title, SKIP,
                           "nothing to compare: no daemon heartbeat yet (see daemon heartbeats)",
                           data)
    errors = [f"{s['daemonType']}: {_first_line(e.get('message'))}" for s in statuses
              for e in (s.get("lastHeartbeatErrors") or [])[:1]]
    detail = f"GraphQL shows the database's heartbeat times for {len(timed)} daemons"
    if errors:
        return CheckResult(name, title, WARN,
                           f"{detail}, but daemons report errors: {'; '.join(errors)}", data)
    return CheckResult(name, title, OK, detail, data)


def compare_heartbeats(statuses: list[dict[str, Any]], reads: list[list[Heartbeat]],
                       required: Sequence[str] | None) -> list[str]:
    """What the webserver shows that no read of the database matches (empty: they agree)."""
    out = []
    in_db = [{h.daemon_type: h.timestamp.timestamp() for h in read} for read in reads]
    shown = {s["daemonType"]: s.get("lastHeartbeatTime") for s in statuses}
    for daemon_type, seen in sorted(shown.items()):
        candidates = [read.get(daemon_type) for read in in_db]
        if seen is None:
            if any(c is not None for c in candidates):
                out.append(f"{daemon_type} has no heartbeat in the webserver, one in the database")
        elif not any(c is not None and abs(c - seen) <= _SAME_TIME_S for c in candidates):
            db_time = next((c for c in reversed(candidates) if c is not None), None)
            out.append(f"{daemon_type} at {_clock(seen)} in the webserver, "
                       f"{_clock(db_time) if db_time else 'none'} in the database")
    for daemon_type in sorted(set(required or ()) - set(shown)):
        out.append(f"the webserver does not require daemon {daemon_type} (another dagster.yaml)")
    return out


def daemon_statuses(status: dict[str, Any]) -> list[dict[str, Any]]:
    health = ((status.get("instance") or {}).get("daemonHealth") or {})
    return list(health.get("allDaemonStatuses") or [])


def websocket(title: str, web: WebObservation | None) -> CheckResult:
    name = "public.websocket"
    if skipped := _unreachable(name, title, web):
        return skipped
    url = web.base.url("/graphql").replace("http", "ws", 1)
    if web.websocket_error:
        return CheckResult(name, title, FAIL, web.websocket_error, {"url": url})
    compression = ("compressed (permessage-deflate)" if web.extensions
                   else "uncompressed (no compression negotiated)")
    return CheckResult(name, title, OK,
                       f"{url} upgrades with subprotocol {web.protocol} and acknowledges, "
                       f"{compression}", {"url": url, "extensions": web.extensions or ""})


# -- 6. operations -----------------------------------------------------------------------

def definitions(web: WebObservation) -> CheckResult:
    name, title = "webserver.definitions", "Definitions load"
    if skipped := _unreachable(name, title, web):
        return skipped
    if web.status_error:
        return CheckResult(name, title, SKIP, "needs the webserver's GraphQL: see above")
    workspace = web.status.get("workspaceOrError") or {}
    if workspace.get("__typename") == "PythonError":
        return CheckResult(name, title, FAIL,
                           f"the workspace does not load: {_first_line(workspace.get('message'))}")
    entries = workspace.get("locationEntries") or []
    if not entries:
        return CheckResult(name, title, FAIL,
                           "the webserver loads no code location: check workspace.yaml")
    failed, loading = [], []
    for entry in entries:
        loaded = entry.get("locationOrLoadError") or {}
        if loaded.get("__typename") == "PythonError":
            failed.append(f"{entry['name']}: {_first_line(loaded.get('message'))}")
        elif entry.get("loadStatus") != "LOADED":
            loading.append(entry["name"])
    data = {"locations": [e["name"] for e in entries]}
    if failed:
        return CheckResult(
            name, title, FAIL,
            f"code location failed to load: {'; '.join(failed)} (an import error in "
            "dagster_definitions.py? see dagster_webserver_stderr.log)", data)
    if loading:
        return CheckResult(name, title, WARN, f"still loading: {', '.join(loading)}", data)
    return CheckResult(name, title, OK,
                       f"{len(entries)} code location(s) loaded: {', '.join(data['locations'])}",
                       data)


def schedules(web: WebObservation, wanted: Sequence[str],
              start: Callable[[list[str]], str] | None = None) -> CheckResult:
    """`start(names)`: the command that starts the stopped ones (see hints.schedule_start)."""
    name, title = "operations.schedules", "Schedules running"
    if skipped := _unreachable(name, title, web):
        return skipped
    if web.status_error:
        return CheckResult(name, title, SKIP, "needs the webserver's GraphQL: see above")
    found: dict[str, list[str]] = {}
    workspace = web.status.get("workspaceOrError") or {}
    for entry in workspace.get("locationEntries") or []:
        location = entry.get("locationOrLoadError") or {}
        for repo in location.get("repositories") or []:
            for sched in repo.get("schedules") or []:
                state = (sched.get("scheduleState") or {}).get("status") or "UNKNOWN"
                found.setdefault(sched["name"], []).append(state)
    data = {n: found.get(n) for n in wanted}
    missing = [n for n in wanted if n not in found]
    stopped = [n for n in wanted if n in found and any(s != "RUNNING" for s in found[n])]
    problems = []
    if missing:
        problems.append(f"not in the loaded definitions: {', '.join(missing)} (add them to "
                        "dagster_definitions.py, or fix dagpg.verify.schedules in config.yml)")
    if stopped:
        command = start(stopped) if start else "dagster schedule start NAME"
        problems.append(f"not running: {', '.join(stopped)} (start each in the UI, Schedules, "
                        f"or run `{command}`)")
    if problems:
        return CheckResult(name, title, FAIL, "; ".join(problems), data)
    return CheckResult(name, title, OK, f"RUNNING: {', '.join(wanted)}", data)


@dataclass(frozen=True)
class BackupObservation:
    backup: Any = None  # dagpg.backup.catalog.BackupInfo
    error: str | None = None


def backup(obs: BackupObservation | None, max_age_h: float,
           now: datetime | None = None) -> CheckResult:
    name, title = "operations.backup", "Newest backup"
    if obs is None:
        return CheckResult(name, title, SKIP, "needs the database: see database")
    if obs.error:
        return CheckResult(name, title, FAIL, obs.error)
    if obs.backup is None:
        return CheckResult(name, title, FAIL,
                           "no backup in the catalog: run `dagpg backup` and enable the backup "
                           "schedule")
    info = obs.backup
    age_h = ((now or datetime.now(UTC)) - info.finished_at).total_seconds() / 3600
    data = {"name": info.name, "finished_at": info.finished_at.isoformat(),
            "age_h": round(age_h, 2), "verified": bool(info.verified), "max_age_h": max_age_h}
    if age_h > max_age_h:
        return CheckResult(
            name, title, FAIL,
            f"newest backup {info.name} is {age_h:.1f} h old (limit {max_age_h:g} h): is the "
            "backup schedule running? see its last run in the UI", data)
    if not info.verified:
        return CheckResult(name, title, WARN,
                           f"newest backup {info.name} is {age_h:.1f} h old but not verified: "
                           f"run `dagpg backups verify {info.name}`", data)
    return CheckResult(name, title, OK,
                       f"newest backup {info.name} is {age_h:.1f} h old and verified", data)


@dataclass(frozen=True)
class KeeperObservation:
    rows: list[Any] = field(default_factory=list)  # dagpg.verify.keeper.KeeperRow, newest first
    error: str | None = None
    service: str = "DagsterKeeper"  # dagpg.services.keeper
    log: str = "reports/logs/watch.jsonl"  # in dagpg.watch.log_dir


def keeper(obs: KeeperObservation | None, now: datetime | None = None) -> CheckResult:
    """The keeper (`dagpg watch`) passed within 3 of its intervals and has not given up."""
    name, title = "keeper.heartbeat", "Keeper"
    if obs is None:
        return CheckResult(name, title, SKIP, "needs the database at head: see database")
    if obs.error:
        return CheckResult(name, title, FAIL, obs.error)
    if not obs.rows:
        return CheckResult(name, title, WARN,
                           "no keeper has run against this instance: install the DagsterKeeper "
                           "service (dagpg render servy|systemd) or run `dagpg watch`")
    row = obs.rows[0]
    now = now or datetime.now(UTC)
    age, limit = row.age_s(now), 3 * row.interval_s
    data = {**row.as_dict(), "age_s": round(age, 1), "max_age_s": limit}
    where = f"the keeper on {row.host} (pid {row.pid})"
    if age > limit:
        return CheckResult(
            name, title, FAIL,
            f"{where} last passed {age:.0f} s ago (limit 3 x {row.interval_s:g} s): is the "
            f"{obs.service} service running? see its log, {obs.log}", data)
    gave_up = row.state.get("gave_up") or {}
    if gave_up:
        listed = ", ".join(f"{svc} ({info.get('restarts')} restarts in the last hour)"
                           for svc, info in sorted(gave_up.items()))
        return CheckResult(
            name, title, FAIL,
            f"{where} gave up restarting {listed}: find the cause in the service's log, fix "
            "it and restart the service; the keeper acts again an hour after its first restart",
            data)
    return CheckResult(name, title, OK,
                       f"{where} passed {age:.0f} s ago (every {row.interval_s:g} s)", data)


def _first_line(text: str | None) -> str:
    text = (text or "").strip()
    return text.splitlines()[0] if text else "(no message)"


def _clock(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S.%f")[:-3] + "Z"


@dataclass(frozen=True)
class DiskObservation:
    locations: list = field(default_factory=list)  # dagpg.prune.disk.Location
    error: str | None = None


def disk(obs: DiskObservation | None, retention: Any) -> CheckResult:
    """Free space where the database, the backups and the compute logs live: warn under
    retention.disk_warn_free_pct or disk_warn_days_left days left, fail under disk_fail_free_pct
    (a full disk makes PostgreSQL refuse writes, and Dagster stops)."""
    name, title = "operations.disk", "Disk space"
    if obs is None:
        return CheckResult(name, title, SKIP, "needs the instance: see same_home")
    data = {"locations": [p.as_dict() for p in obs.locations],
            "warn_free_pct": retention.disk_warn_free_pct,
            "fail_free_pct": retention.disk_fail_free_pct,
            "warn_days_left": retention.disk_warn_days_left}
    if obs.error:
        return CheckResult(name, title, WARN, f"could not measure: {obs.error}", data)
    measured = [p for p in obs.locations if p.free_pct is not None]
    if not measured:
        return CheckResult(name, title, WARN, "could not measure any folder: "
                           + "; ".join(f"{p.role}: {p.note}" for p in obs.locations), data)

    def line(p) -> str:
        left = f", {wording.days_left(p.days_left)} left" if p.days_left is not None else ""
        return f"{p.role} {p.free_pct:.0f}% free{left} ({p.path})"

    full = [p for p in measured if p.free_pct < retention.disk_fail_free_pct]
    if full:
        return CheckResult(name, title, FAIL, "; ".join(line(p) for p in full) + ": PostgreSQL "
                           "stops accepting writes on a full disk; free space now (`dagpg "
                           "prune`, `dagpg backups prune`, or a bigger disk)", data)
    low = [p for p in measured if p.free_pct < retention.disk_warn_free_pct
           or (p.days_left is not None and p.days_left < retention.disk_warn_days_left)]
    unknown = [f"{p.role}: {p.note}" for p in obs.locations if p.free_pct is None and p.note]
    if low:
        return CheckResult(name, title, WARN, "; ".join(line(p) for p in low) + ": plan for more "
                           "space, or prune sooner (dagpg.retention in config.yml)", data)
    return CheckResult(name, title, OK, "; ".join([*(line(p) for p in measured), *unknown]),
                       data)
