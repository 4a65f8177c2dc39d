"""A scratch database on the instance's server, with a DAGSTER_HOME of its own, for rehearsing
an upgrade on a copy. Always dropped afterwards, whatever happened."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import yaml

from dagpg import pg
from dagpg.instance import Instance
from dagpg.upgrade.errors import UpgradeRefusedError

log = logging.getLogger(__name__)

# The scratch dagster.yaml names this variable; it is set in this process only, while the
# scratch instance is open, so the password is never written to the file.
PASSWORD_VAR = "DAGPG_SCRATCH_PG_PASSWORD"


@contextlib.contextmanager
def scratch_instance(instance: Instance, prefix: str = "dagpg_rehearse") -> Iterator[Instance]:
    """A new empty database beside the instance's, and an Instance (with its own DAGSTER_HOME)
    pointing at it. Dropped on exit."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with pg.connection(instance.target, autocommit=True) as conn:
        pg.create_scratch_database(conn, name, error=UpgradeRefusedError,
                                   needed_by="the rehearsal", otherwise=" and try again")
    home = Path(tempfile.mkdtemp(prefix="dagpg-scratch-home-"))
    target = replace(instance.target, database=name, password_source=f"env:{PASSWORD_VAR}")
    saved = os.environ.get(PASSWORD_VAR)
    try:
        _write_yaml(home, target)
        if target.password:
            os.environ[PASSWORD_VAR] = target.password
        yield Instance(home=home, yaml_path=home / "dagster.yaml", target=target,
                       storage_key="storage.postgres", compute_logs_dir=home / "storage")
    finally:
        if saved is None:
            os.environ.pop(PASSWORD_VAR, None)
        else:
            os.environ[PASSWORD_VAR] = saved
        shutil.rmtree(home, ignore_errors=True)
        drop_database(instance, name)


def drop_leftovers(instance: Instance, prefix: str = "dagpg_rehearse") -> list[str]:
    """Drop scratch databases a killed rehearsal left (call while holding the upgrade lock,
    so no other rehearsal is using one)."""
    with pg.connection(instance.target) as conn, conn.cursor() as cur:
        cur.execute("SELECT datname FROM pg_database WHERE datname LIKE %s ORDER BY 1",
                    (prefix.replace("_", "\\_") + "\\_%",))
        names = [n for (n,) in cur.fetchall()]
    for name in names:
        log.info("dropping %s, left by an interrupted rehearsal", name)
        drop_database(instance, name)
    return names


def drop_database(instance: Instance, name: str) -> None:
    try:
        with pg.connection(instance.target, autocommit=True) as conn:
            pg.drop_database(conn, name)
    except Exception as exc:  # noqa: BLE001  (report, do not hide the original error)
        log.warning("scratch database %s could not be dropped (%s); drop it by hand", name, exc)


def _write_yaml(home: Path, target) -> None:
    db = {"username": target.user, "hostname": target.host, "port": target.port,
          "db_name": target.database, "scheme": target.scheme}
    if target.password:
        db["password"] = {"env": PASSWORD_VAR}
    if target.params:
        db["params"] = dict(target.params)
    config = {"storage": {"postgres": {"postgres_db": db}}, "telemetry": {"enabled": False}}
    (home / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
