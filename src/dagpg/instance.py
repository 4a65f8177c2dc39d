"""Resolve, without starting Dagster, the PostgreSQL target a DAGSTER_HOME points at.

Reads dagster.yaml the way Dagster does (`storage: postgres:` with `postgres_db` or
`postgres_url`, or the older per-storage `run_storage`/`event_log_storage`/`schedule_storage`
blocks) and resolves `{env: NAME}` sources. The password is only ever held in memory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import yaml

from dagpg.errors import (
    EmptyPasswordError,
    InstanceError,
    MissingPasswordError,
    NotPostgresError,
)

DAGSTER_YAML = "dagster.yaml"
DEFAULT_PASSWORD_VAR = "DAGSTER_PG_PASSWORD"
_LEGACY_KEYS = ("run_storage", "event_log_storage", "schedule_storage")


@dataclass(frozen=True)
class PgTarget:
    """Where an instance's storage lives. `password` never appears in repr or URLs shown."""

    host: str
    port: int
    database: str
    user: str
    password: str | None = field(default=None, repr=False)
    password_source: str = "none"  # "env:NAME", "literal", or "none"
    scheme: str = "postgresql"
    params: dict[str, str] = field(default_factory=dict)

    @property
    def password_variable(self) -> str | None:
        src = self.password_source
        return src.split(":", 1)[1] if src.startswith("env:") else None

    @property
    def password_missing(self) -> bool:
        """dagster.yaml names a password source (`{env: NAME}`) that gave nothing: connecting
        would fail, so callers that can do without the database do not try."""
        return self.password is None and self.password_source != "none"

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}/{self.database}"

    def identity(self) -> tuple[str, int, str, str]:
        """What makes two targets the same database for the same user."""
        return (_normal_host(self.host), self.port, self.database, self.user)

    def url(self, *, redact: bool = True) -> str:
        """A libpq URL that never holds the password: `***` in its place, or nothing."""
        userinfo = quote(self.user, safe="")
        if redact and self.password_source != "none":
            userinfo += ":***"
        return f"postgresql://{userinfo}@{self.host}:{self.port}/{quote(self.database, safe='')}"

    def libpq_env(self) -> dict[str, str]:
        """Environment for a child process (pg_dump, psql): the password never goes on argv."""
        env = {
            "PGHOST": self.host,
            "PGPORT": str(self.port),
            "PGUSER": self.user,
            "PGDATABASE": self.database,
        }
        if self.password:
            env["PGPASSWORD"] = self.password
        if "sslmode" in self.params:
            env["PGSSLMODE"] = self.params["sslmode"]
        return env

    def as_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "database": self.database,
            "user": self.user,
            "password_source": self.password_source,
            "scheme": self.scheme,
            "url": self.url(),
        }


@dataclass(frozen=True)
class Instance:
    """A DAGSTER_HOME and what its dagster.yaml resolves to."""

    home: Path
    yaml_path: Path
    target: PgTarget
    storage_key: str
    compute_logs_dir: Path

    def as_dict(self) -> dict[str, Any]:
        return {
            "dagster_home": str(self.home),
            "dagster_yaml": str(self.yaml_path),
            "storage": self.storage_key,
            "compute_logs_dir": str(self.compute_logs_dir),
            **self.target.as_dict(),
        }


def resolve_home(home: str | os.PathLike | None = None) -> Path:
    """The DAGSTER_HOME to use: `home`, else $DAGSTER_HOME. Must be an existing directory."""
    raw = home if home is not None else os.environ.get("DAGSTER_HOME")
    if not raw:
        example = ('$env:DAGSTER_HOME = "$PWD\\dagster_home"' if os.name == "nt"
                   else "export DAGSTER_HOME=$PWD/dagster_home")
        raise InstanceError(
            "DAGSTER_HOME is not set; set it to the folder holding dagster.yaml "
            f"(e.g. {example}) or pass --dagster-home"
        )
    path = Path(raw).expanduser()
    if not path.is_dir():
        raise InstanceError(
            f"DAGSTER_HOME={raw} is not a directory; create it or point DAGSTER_HOME at the "
            "folder holding dagster.yaml"
        )
    return path.resolve()


def read_dagster_yaml(home: Path) -> tuple[Path, dict[str, Any]]:
    path = home / DAGSTER_YAML
    if not path.is_file():
        raise InstanceError(
            f"{path} is missing; copy dagster_home/dagster.yaml from the project "
            "or point DAGSTER_HOME at the folder that has it"
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise InstanceError(f"{path} cannot be parsed{where}; fix its YAML") from None
    if not isinstance(data, dict):
        raise InstanceError(f"{path} cannot be parsed: expected a mapping; fix its YAML")
    return path, data


def resolve_instance(
    home: str | os.PathLike | None = None, *, require_password: bool = True
) -> Instance:
    """Resolve DAGSTER_HOME (default $DAGSTER_HOME) to its PostgreSQL target."""
    home_path = resolve_home(home)
    yaml_path, data = read_dagster_yaml(home_path)
    storage_key, pg_config = _postgres_block(yaml_path, data)
    target = _target(yaml_path, storage_key, pg_config, require_password)
    return Instance(
        home=home_path,
        yaml_path=yaml_path,
        target=target,
        storage_key=storage_key,
        compute_logs_dir=_compute_logs_dir(yaml_path, home_path, data),
    )


def _postgres_block(yaml_path: Path, data: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    storage = data.get("storage")
    if isinstance(storage, dict) and storage:
        kind = next(iter(storage))
        if kind == "postgres" and isinstance(storage["postgres"], dict):
            return "storage.postgres", storage["postgres"]
        names = {"sqlite": "SQLite", "mysql": "MySQL", "custom": "a custom storage class"}
        raise NotPostgresError(str(yaml_path), f"{names.get(kind, kind)} (storage.{kind})")
    legacy = [data.get(k) for k in _LEGACY_KEYS]
    if any(legacy):
        blocks = []
        for key, block in zip(_LEGACY_KEYS, legacy, strict=True):
            module = (block or {}).get("module", "") if isinstance(block, dict) else ""
            if not module.startswith("dagster_postgres"):
                found = module or "Dagster's default SQLite"
                raise NotPostgresError(str(yaml_path), f"{found} ({key})")
            blocks.append(block.get("config") or {})
        if any(b != blocks[0] for b in blocks[1:]):
            raise InstanceError(
                f"{yaml_path}: run_storage, event_log_storage and schedule_storage point at "
                "different databases; use one `storage: postgres:` block"
            )
        return "run_storage/event_log_storage/schedule_storage", blocks[0]
    raise NotPostgresError(str(yaml_path), "SQLite (Dagster's default: no storage block)")


def _target(
    yaml_path: Path, key: str, config: dict[str, Any], require_password: bool
) -> PgTarget:
    if "postgres_url" in config:
        url, source = _value(yaml_path, f"{key}.postgres_url", config["postgres_url"])
        return _target_from_url(yaml_path, key, url, source)
    db = config.get("postgres_db")
    if not isinstance(db, dict):
        raise InstanceError(
            f"{yaml_path}: {key} needs a postgres_db block (or postgres_url); "
            "see dagster_home/dagster.yaml in the project"
        )
    where = f"{key}.postgres_db"
    for required in ("username", "hostname", "db_name"):
        if required not in db:
            raise InstanceError(f"{yaml_path}: {where}.{required} is missing; add it")
    values = {name: _value(yaml_path, f"{where}.{name}", db[name])[0] for name in
              ("username", "hostname", "db_name")}
    port = _port(yaml_path, f"{where}.port", db.get("port", 5432))
    password, source = None, "none"
    if db.get("password") not in (None, ""):
        source = _source(db["password"])
        password = _password(yaml_path, f"{where}.password", db["password"], require_password)
    return PgTarget(
        host=values["hostname"],
        port=port,
        database=values["db_name"],
        user=values["username"],
        password=password,
        password_source=source,
        scheme=str(db.get("scheme") or "postgresql"),
        params={str(k): str(v) for k, v in (db.get("params") or {}).items()},
    )


def _target_from_url(yaml_path: Path, key: str, url: str, source: str) -> PgTarget:
    parts = urlsplit(url)
    if not parts.scheme.startswith("postgres") or not parts.hostname:
        raise InstanceError(f"{yaml_path}: {key}.postgres_url is not a PostgreSQL URL; fix it")
    password = unquote(parts.password) if parts.password else None
    return PgTarget(
        host=parts.hostname,
        port=parts.port or 5432,
        database=unquote(parts.path.lstrip("/")) or "postgres",
        user=unquote(parts.username or ""),
        password=password,
        password_source=source if password else "none",
        scheme=parts.scheme,
        params=dict(parse_qsl(parts.query)),
    )


def _source(value: Any) -> str:
    if isinstance(value, dict) and "env" in value:
        return f"env:{value['env']}"
    return "literal"


def _value(yaml_path: Path, key: str, value: Any) -> tuple[str, str]:
    if isinstance(value, dict):
        if set(value) != {"env"}:
            raise InstanceError(f"{yaml_path}: {key} must be a value or {{env: NAME}}; fix it")
        name = str(value["env"])
        resolved = os.environ.get(name)
        if resolved is None:
            raise InstanceError(
                f"{yaml_path}: {key} comes from environment variable {name}, which is not set; "
                "set it"
            )
        return resolved, f"env:{name}"
    return str(value), "literal"


def _password(yaml_path: Path, key: str, value: Any, required: bool) -> str | None:
    if isinstance(value, dict) and set(value) == {"env"}:
        resolved = os.environ.get(str(value["env"]))
        if resolved is None and required:
            raise MissingPasswordError(str(value["env"]))
        if resolved == "":
            # Empty is not a password: an error where one is needed, "not known" elsewhere.
            if required:
                raise EmptyPasswordError(str(value["env"]))
            return None
        return resolved
    return _value(yaml_path, key, value)[0]


def _port(yaml_path: Path, key: str, value: Any) -> int:
    raw = _value(yaml_path, key, value)[0] if isinstance(value, dict) else value
    try:
        port = int(raw)
    except (TypeError, ValueError):
        raise InstanceError(f"{yaml_path}: {key} must be a port number, got {raw!r}") from None
    if not 0 < port < 65536:
        raise InstanceError(f"{yaml_path}: {key} must be between 1 and 65535, got {port}")
    return port


def _compute_logs_dir(yaml_path: Path, home: Path, data: dict[str, Any]) -> Path:
    block = data.get("compute_logs")
    if isinstance(block, dict):
        config = block.get("config") or {}
        base = config.get("base_dir") if isinstance(config, dict) else None
        if base is not None:
            return Path(_value(yaml_path, "compute_logs.config.base_dir", base)[0])
    return home / "storage"  # Dagster's default for LocalComputeLogManager


def _normal_host(host: str) -> str:
    return "127.0.0.1" if host in ("localhost", "127.0.0.1", "::1") else host.lower()
