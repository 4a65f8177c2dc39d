"""The kit's settings: the `dagpg:` section of the project's config.yml, PROJECT_ENV applied.

dagpg works on any Dagster instance, so every setting has a default and the file is optional.
Where the file is: $DAGPG_CONFIG, else config/config.yml beside DAGSTER_HOME's parent (the
project layout), else ./config/config.yml. Relative paths in it are relative to the project root
(the folder holding config/).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

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


class Webserver(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=3000, ge=1, le=65535)
    path_prefix: str = ""


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
    keep_last_runs: int = Field(default=20, ge=0)  # the newest N runs of each job: never touched
    batch_rows: int = Field(default=5000, gt=0)  # rows deleted per committed transaction
    lock_timeout_ms: int = Field(default=2000, gt=0)  # a batch waiting longer gives way, retries
    statement_timeout_s: float = Field(default=120, gt=0)
    nightly: bool = True  # the nightly step (Dagster's instance_ops job, the OS task) prunes
    disk_warn_free_pct: float = Field(default=20, gt=0, lt=100)
    disk_fail_free_pct: float = Field(default=5, gt=0, lt=100)
    disk_warn_days_left: float = Field(default=30, gt=0)


class Windows(_Section):
    """Where the project lives on the Windows server (`dagpg render`); relative to project_root."""

    project_root: str = r"C:\projects\arcpy-orchestration"
    env_dir: str = "env"
    dagster_home: str = "dagster_home"
    log_dir: str = r"reports\logs"
    project_env: str = "prod"
    iis_site: str = "Default Web Site"


class KitSettings(_Section):
    backup: Backup = Backup()
    services: Services = Services()
    webserver: Webserver = Webserver()
    verify: Verify = Verify()
    windows: Windows = Windows()
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
