"""The kit's settings: the `dagpg:` section of the project's config.yml, PROJECT_ENV applied.

dagpg works on any Dagster instance, so every setting has a default and the file is optional.
Where the file is: $DAGPG_CONFIG, else config/config.yml beside DAGSTER_HOME's parent (the
project layout), else ./config/config.yml. Relative paths in it are relative to the project root
(the folder holding config/).
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any, ClassVar, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from dagpg.errors import ConfigurationError

SECTION = "dagpg"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Schedule(_Section):
    cron: str = "30 1 * * *"
    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ValueError, ZoneInfoNotFoundError):
            raise ValueError("not a known timezone name") from None
        return value


class Backup(_Section):
    directory: str = "backups"
    keep_daily: int = Field(default=7, ge=1)
    keep_weekly: int = Field(default=4, ge=0)
    schedule: Schedule = Schedule()


class Services(_Section):
    webserver: str = "DagsterWebserver"
    daemon: str = "DagsterDaemon"
    read_only_webserver: str = "DagsterWebserverReadOnly"  # with dagpg.access: the viewers'
    keeper: str = "DagsterKeeper"  # `dagpg watch`


class Webserver(_Section):
    """The webserver users open. With dagpg.access enabled it is the read-only one (viewers);
    without, the only one. Every webserver binds to `host`."""

    host: str = "127.0.0.1"
    port: int = Field(default=3000, ge=1, le=65535)
    path_prefix: str = "/dagster"  # "" = the site root (a single webserver only)


class Principals(_Section):
    """Who belongs to a role: Windows groups (IIS URL Authorization `roles`) and user names
    (IIS `users`; the user names of nginx's htpasswd file)."""

    groups: list[str] = []
    users: list[str] = []

    @model_validator(mode="before")
    @classmethod
    def _plain_list(cls, data: Any) -> Any:
        """`viewers: ['CORP\\GIS Analysts', 'CORP\\jdoe']`: names that may be groups or users.
        Each is allowed as both (IIS matches `roles` against the user's groups, `users` against
        the user's own name, so the other rule never matches; nginx knows user names only)."""
        if isinstance(data, list):
            return {"groups": data, "users": data}
        return data

    @property
    def empty(self) -> bool:
        return not self.groups and not self.users


class Access(_Section):
    """Authentication at the proxy: viewers reach the read-only webserver (dagpg.webserver),
    operators also the full one at `admin_path_prefix` (see the README, "Who can do what")."""

    enabled: bool = True
    viewers: Principals = Principals()
    operators: Principals = Principals(groups=["Administrators"])  # the server's local admins
    admin_port: int = Field(default=3001, ge=1, le=65535)
    admin_path_prefix: str = "/dagster-admin"
    htpasswd: str = ""  # nginx only: the htpasswd file (user:hash lines); "" = nginx not used
    # Where `dagpg verify --public-url` probes that the webservers' ports do not answer;
    # empty: every non-loopback address of this machine.
    probe_addresses: list[str] = []


class Verify(_Section):
    heartbeat_max_age_s: float = Field(default=120, gt=0)
    backup_max_age_h: float = Field(default=26, gt=0)
    schedules: list[str] = ["park_access_daily", "instance_backup_nightly"]  # must be RUNNING
    timeout_s: float = Field(default=5, gt=0)  # each network call of `dagpg verify`


class Retention(_Section):
    """How long the run history is kept (`dagpg prune`, the nightly step) and when the disk is
    too full (`dagpg verify`'s disk check). Days may be fractions."""

    logs_days: float = Field(default=30, gt=0)  # finished runs older than this lose their logs
    runs_days: float = Field(default=365, gt=0)  # ... and older than this, the whole run
    keep_last_runs: int = Field(default=20, gt=0)  # the newest N runs of each job: never touched
    batch_rows: int = Field(default=5000, gt=0)  # rows deleted per committed transaction
    lock_timeout_ms: int = Field(default=2000, gt=0)  # a batch waiting longer gives way, retries
    statement_timeout_s: float = Field(default=120, gt=0)
    nightly: bool = True  # the nightly step (Dagster's instance_ops job, the OS task) prunes
    disk_warn_free_pct: float = Field(default=20, gt=0, lt=100)
    disk_fail_free_pct: float = Field(default=5, gt=0, lt=100)
    disk_warn_days_left: float = Field(default=30, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _postgres_names(cls, data: Any) -> Any:
        """`lock_timeout` and `statement_timeout` as PostgreSQL spells them (a number of
        milliseconds, or `2s`, `500ms`, `2min`) stand for lock_timeout_ms and statement_timeout_s."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for name, field_name, per_ms in (("lock_timeout", "lock_timeout_ms", 1),
                                         ("statement_timeout", "statement_timeout_s", 1000)):
            if name not in data:
                continue
            if field_name in data:
                raise ValueError(f"give {name} or {field_name}, not both")
            ms = _postgres_ms(data.pop(name), name)
            data[field_name] = round(ms) if per_ms == 1 else ms / per_ms
        return data


_PG_UNITS_MS = {"us": 0.001, "ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}


def _postgres_ms(value: Any, name: str) -> float:
    """A PostgreSQL duration (no unit: milliseconds) in milliseconds, more than 0."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", str(value))
    if isinstance(value, bool) or not match or match.group(2) not in ("", *_PG_UNITS_MS):
        raise ValueError(f"{name}: not a duration, got {value!r}; give milliseconds (2000) or "
                         "a number with a unit (2s, 500ms, 2min)")
    ms = float(match.group(1)) * _PG_UNITS_MS.get(match.group(2), 1)
    if ms <= 0:
        raise ValueError(f"{name}: must be more than 0, got {value!r}")
    return ms


class Windows(_Section):
    """Where the project lives on the Windows server (`dagpg render`); relative to project_root."""

    project_root: str = r"C:\projects\arcpy-orchestration"
    env_dir: str = "env"
    dagster_home: str = "dagster_home"
    log_dir: str = r"reports\logs"
    project_env: str = "prod"
    iis_site: str = "Default Web Site"


class Arcpy(_Section):
    """`dagpg verify`'s check that arcpy imports with a license in the services' Python."""

    check: Literal["auto", "required", "off"] = "auto"  # auto: where arcpy is installed there
    timeout_s: float = Field(default=120, gt=0)  # importing arcpy checks out a license
SERVICE_MANAGERS = ("servy", "systemd", "supervisord")


class Watch(_Section):
    """`dagpg watch`, the keeper: how often it looks, when it acts, through what."""

    interval_s: float = Field(default=30, gt=0)
    service_manager: str = "servy"  # servy | systemd | supervisord
    heartbeat_max_age_s: float = Field(default=90, gt=0)  # SCHEDULER's beat ages up to ~60 s
    webserver_timeout_s: float = Field(default=10, gt=0)
    failures_before_restart: int = Field(default=2, ge=1)  # consecutive passes
    max_restarts_per_hour: int = Field(default=3, ge=1)  # per service; then it gives up
    restart_grace_s: float = Field(default=90, ge=0)  # after a start, before judging again
    orphan_settle_s: float = Field(default=10, ge=0)  # Dagster's code server reports in ~1 s
    starting_timeout_s: float = Field(default=600, gt=0)  # STARTING with no run worker
    log_dir: str = "reports/logs"
    log_max_bytes: int = Field(default=5_000_000, ge=10_000)
    log_backups: int = Field(default=5, ge=1)
    servy_cli: str = "servy-cli"
    systemctl: str = "systemctl"
    supervisorctl: str = "supervisorctl"
    supervisor_config: str = ""  # supervisorctl -c FILE; empty: supervisorctl's own search

    LOG_FILE: ClassVar[str] = "watch.jsonl"  # in log_dir, rotated

    @field_validator("service_manager")
    @classmethod
    def _known_manager(cls, value: str) -> str:
        if value not in SERVICE_MANAGERS:
            raise ValueError(f"unknown service manager; choose one of {', '.join(SERVICE_MANAGERS)}")
        return value


class Systemd(_Section):
    """Where the project lives on a Linux server (`dagpg render systemd`). Empty project_root:
    the project folder holding this config/ (render on the server itself)."""

    project_root: str = ""
    venv: str = ".venv"
    dagster_home: str = "dagster_home"
    user: str = "dagster"  # runs the webserver and the daemon; the keeper runs as root
    environment_file: str = "/etc/dagpg/dagster.env"  # DAGSTER_PG_PASSWORD=..., mode 0600
    project_env: str = "prod"


class KitSettings(_Section):
    backup: Backup = Backup()
    services: Services = Services()
    webserver: Webserver = Webserver()
    verify: Verify = Verify()
    windows: Windows = Windows()
    arcpy: Arcpy = Arcpy()
    access: Access = Access()
    watch: Watch = Watch()
    systemd: Systemd = Systemd()
    retention: Retention = Retention()

    _path: Path | None = PrivateAttr(default=None)
    _env: str = PrivateAttr(default="dev")

    @property
    def path(self) -> Path | None:
        """The config file these settings came from; None when defaults were used."""
        return self._path

    @property
    def env(self) -> str:
        return self._env

    @property
    def project_dir(self) -> Path:
        return self._path.resolve().parent.parent if self._path else Path.cwd()

    def resolve(self, relative: str) -> Path:
        p = Path(relative)
        return p if p.is_absolute() else self.project_dir / p


def find_config(dagster_home: str | os.PathLike | None = None) -> Path | None:
    explicit = os.environ.get("DAGPG_CONFIG")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigurationError(f"DAGPG_CONFIG={explicit}: no such file; fix or unset it")
        return path
    home = dagster_home or os.environ.get("DAGSTER_HOME")
    candidates = [Path(home).resolve().parent / "config" / "config.yml"] if home else []
    candidates.append(Path.cwd() / "config" / "config.yml")
    return next((c for c in candidates if _is_file(c)), None)


def _is_file(path: Path) -> bool:
    """is_file(), with a folder this user may not look into counting as no file there."""
    try:
        return path.is_file()
    except OSError:
        return False


def load_settings(
    path: str | os.PathLike | None = None,
    env: str | None = None,
    *,
    dagster_home: str | os.PathLike | None = None,
) -> KitSettings:
    """The kit's settings from `path` (found with `find_config` when None)."""
    env = env or os.environ.get("PROJECT_ENV") or "dev"
    path = Path(path) if path else find_config(dagster_home)
    if path is None:
        return KitSettings()
    data = _section(path, env)
    try:
        settings = KitSettings.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join([SECTION, *(str(p) for p in err["loc"])])
        if err["type"] == "extra_forbidden":
            what = "unknown key; remove it or check its spelling"
        elif isinstance(err.get("input"), dict):  # a section's own check: its message says it
            what = err["msg"].lower()
        else:
            what = f"{err['msg'].lower()}, got {err.get('input')!r}"
        raise ConfigurationError(f"{path}: {key}: {what} (PROJECT_ENV={env})") from None
    settings._path, settings._env = path, env
    return settings


def _section(path: Path, env: str) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read {path}: {exc.strerror}; give the user running dagpg read access to it"
        ) from None
    except yaml.YAMLError:
        raise ConfigurationError(f"{path}: not valid YAML; fix the file") from None
    if not isinstance(raw, dict):
        raise ConfigurationError(f"{path}: expected a mapping at the top level")
    environments = raw.get("environments") or {}
    if environments and env not in environments:
        known = ", ".join(sorted(environments))
        raise ConfigurationError(
            f"{path}: PROJECT_ENV={env!r} is not an environment in this file "
            f"(known: {known}); set PROJECT_ENV to one of them"
        )
    base = raw.get(SECTION) or {}
    overlay = (environments.get(env) or {}).get(SECTION) or {}
    return _merge(base, overlay)


def _merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged
