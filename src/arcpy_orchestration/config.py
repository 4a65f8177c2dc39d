"""Typed settings from config/config.yml, with the `environments.<PROJECT_ENV>` overlay applied.

Read once: `get_config()` caches. The `dagpg:` section belongs to the operations kit, which
validates it itself; here it is only allowed to exist.
"""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from arcpy_orchestration.errors import ConfigError

PROJECT_DIR = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG_PATH = PROJECT_DIR / "config" / "config.yml"
DEFAULT_ENV = "dev"
KIT_SECTION = "dagpg"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Spatial(_Section):
    working_wkid: int


class Gis(_Section):
    backend: Literal["auto", "arcpy", "open_source"] = "auto"


class Schedule(_Section):
    cron: str
    timezone: str


class Workbook(_Section):
    """How the workbook prints and shows values."""

    paper: Literal["letter", "a4"] = "letter"
    value_format: Annotated[str, Field(min_length=1)] = "$#,##0"  # an Excel number format


class ParkAccess(_Section):
    parks_fc: str
    parcels_fc: str
    id_field: str
    value_field: str
    district_field: str
    walk_distance_m: Annotated[float, Field(gt=0)]
    workspace: str
    output_summary_path: str
    detail_row_cap: Annotated[int, Field(ge=0)]
    sample_parcels: Annotated[int, Field(gt=0)]
    schedule: Schedule
    workbook: Workbook = Workbook()


class Config(_Section):
    spatial: Spatial
    gis: Gis
    park_access: ParkAccess

    # Where the settings came from; not keys of the file.
    _env: str = PrivateAttr(default=DEFAULT_ENV)
    _path: Path = PrivateAttr(default=DEFAULT_CONFIG_PATH)

    @property
    def env(self) -> str:
        return self._env

    @property
    def path(self) -> Path:
        return self._path

    @property
    def project_dir(self) -> Path:
        return self._path.resolve().parent.parent

    def resolve(self, relative: str) -> Path:
        """A configured path, made absolute against the project root."""
        p = Path(relative)
        return p if p.is_absolute() else self.project_dir / p


def load_config(path: str | os.PathLike | None = None, env: str | None = None) -> Config:
    """Load and validate the pipeline's settings. `env` defaults to $PROJECT_ENV, then `dev`."""
    path = Path(path or os.environ.get("PROJECT_CONFIG") or DEFAULT_CONFIG_PATH)
    env = env or os.environ.get("PROJECT_ENV") or DEFAULT_ENV
    data = read_layered(path, env)
    data.pop(KIT_SECTION, None)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, path, env), path=str(path)) from None
    config._env, config._path = env, path
    return config


@functools.cache
def get_config() -> Config:
    """The settings for this process, read once."""
    return load_config()


def read_layered(path: Path, env: str) -> dict[str, Any]:
    """The file's base mapping with `environments[env]` deep-merged over it."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: config file not found; set PROJECT_CONFIG or restore config/config.yml",
            path=str(path),
        ) from None
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}; fix the file", path=str(path)) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level", path=str(path))
    environments = raw.pop("environments", None) or {}
    if env not in environments:
        known = ", ".join(sorted(environments)) or "none"
        raise ConfigError(
            f"{path}: PROJECT_ENV={env!r} is not an environment in this file "
            f"(known: {known}); set PROJECT_ENV to one of them",
            path=str(path),
            key="environments",
        )
    return deep_merge(raw, environments[env] or {})


def deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def describe_validation_error(exc: ValidationError, path: Path, env: str) -> str:
    """The first problem pydantic found, as one line naming the key and the file."""
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"])
    kind = err["type"]
    if kind == "missing":
        what = "missing key; add it"
    elif kind == "extra_forbidden":
        what = "unknown key; remove it or check its spelling"
    else:
        what = f"{err['msg'].lower()}, got {err.get('input')!r}"
    return f"{path}: {key}: {what} (PROJECT_ENV={env})"
