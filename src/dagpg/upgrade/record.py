"""What the kit remembers about an upgrade, and which Dagster wrote a schema.

Each `--apply` writes `upgrade.json` into its pre-upgrade backup's folder (beside the manifest,
which it does not change): the state of the upgrade (started, applied, failed, rolled back),
the revisions, the Dagster versions before and after, and the inventory taken before the
migration (so a killed upgrade can be finished and verified by running it again). Retention
reads the state to keep the pre-upgrade backup until the next successful upgrade.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from dagpg.backup import manifest as mf
from dagpg.backup.folders import Folder, scan
from dagpg.backup.retention import UPGRADE_RECORD
from dagpg.upgrade import revisions

PRE_UPGRADE = "pre-upgrade"
STARTED, APPLIED, FAILED, ROLLED_BACK = "started", "applied", "failed", "rolled back"
_LOCKSTEP = ("dagster-webserver", "dagster-graphql")  # released with dagster, same version


@dataclass(frozen=True)
class Versions:
    dagster: str
    dagster_postgres: str | None
    source: str  # the backup whose manifest records them

    def pip_line(self) -> str:
        """The `pip install` that puts these versions back (webserver and graphql follow
        dagster's version when installed)."""
        pins = [f"dagster=={self.dagster}"]
        for name in _LOCKSTEP:
            if _installed(name):
                pins.append(f"{name}=={self.dagster}")
        if self.dagster_postgres:
            pins.append(f"dagster-postgres=={self.dagster_postgres}")
        return "pip install " + " ".join(f'"{p}"' for p in pins)

    def as_dict(self) -> dict[str, Any]:
        return {"dagster": self.dagster, "dagster_postgres": self.dagster_postgres,
                "source": self.source, "pip_install": self.pip_line()}


def installed_versions() -> dict[str, str | None]:
    return {"dagster": _installed("dagster"), "dagster_postgres": _installed("dagster-postgres")}


def writer_versions(directory: Path, revision: str | None) -> Versions | None:
    """The Dagster that wrote schema `revision`, as a backup taken by it records: the newest
    backup at that revision whose manifest names another Dagster than the one installed now
    (after `pip install` of the new pins, backups taken now record the new version). When the
    installed Dagster's own head is `revision`, it is the installed one."""
    installed = _installed("dagster")
    for folder in reversed(scan(directory)):
        manifest = folder.manifest or {}
        if (manifest.get("alembic") or {}).get("dagster") != revision:
            continue
        version = manifest.get("dagster_version")
        if version and version != installed:
            return Versions(version, manifest.get("dagster_postgres_version"), folder.name)
    if revision is not None and revision == revisions.head() and installed:
        return Versions(installed, _installed("dagster-postgres"), "the installed Dagster")
    return None


def read(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / UPGRADE_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write(folder: Path, data: dict[str, Any]) -> None:
    """Replace the record atomically (0600: it names the instance's runs)."""
    path = folder / UPGRADE_RECORD
    temp = folder / f".{UPGRADE_RECORD}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, default=str)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(temp, path)


def update(folder: Path, **changes: Any) -> dict[str, Any]:
    data = read(folder) or {}
    data.update(changes)
    write(folder, data)
    return data


def pre_upgrade_backups(directory: Path) -> list[tuple[Folder, dict[str, Any] | None]]:
    """Pre-upgrade backups with their records, newest first."""
    found = [f for f in scan(directory)
             if f.manifest is not None and f.manifest.get("kind") == PRE_UPGRADE]
    return [(f, read(f.path)) for f in reversed(found)]


def now() -> str:
    return mf.iso(mf.now_utc())


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
