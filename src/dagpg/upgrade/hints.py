"""What `dagpg verify` says when Dagster's schema is not at the installed Dagster's head: the
command that fixes each case. Reads revision files and the backup catalog; never imports Dagster
(verify answers in about half a second)."""

from __future__ import annotations

import ast
import importlib.util
import json
import logging
import os
import re
from importlib import metadata
from pathlib import Path

from dagpg import pg
from dagpg.instance import Instance
from dagpg.upgrade.record import Versions
from dagpg.upgrade.revisions import SCRIPTS_OVERRIDE_VAR

log = logging.getLogger(__name__)

_ASSIGNMENT = re.compile(r"^(revision|down_revision)\s*=\s*(.+?)\s*(?:#.*)?$", re.MULTILINE)


def dagster_schema_hint(instance: Instance | None, current: str | None) -> str:
    """One clause saying what to run for a Dagster schema at `current` (not at head)."""
    if current is None:
        return "run `dagpg db upgrade`"
    known = known_revisions()
    installed = _version("dagster") or "?"
    if known is None or current in known:
        return (f"the installed Dagster {installed} is newer: run `dagpg upgrade --rehearse`, "
                "then stop the services and run `dagpg upgrade --apply`")
    found = ahead_versions(instance, current) if instance is not None else None
    if found is None:
        return (f"a newer Dagster than the installed {installed} wrote it: reinstall the "
                "version its backup manifest records (`dagpg backups list`, dagster_version in "
                "the backup's manifest.json)")
    return (f"a newer Dagster than the installed {installed} wrote it: reinstall the version "
            f"backup {found.source}'s manifest records: {found.pip_line()}")


def known_revisions() -> set[str] | None:
    """Every revision among the installed Dagster's alembic scripts, read from the files."""
    override = os.environ.get(SCRIPTS_OVERRIDE_VAR)
    if override:
        versions = Path(override) / "versions"
    else:
        spec = importlib.util.find_spec("dagster")
        if spec is None or not spec.submodule_search_locations:
            return None
        versions = Path(next(iter(spec.submodule_search_locations)), "_core", "storage",
                        "alembic", "versions")
    found = set()
    for path in versions.glob("*.py"):
        for key, value in _ASSIGNMENT.findall(path.read_text(encoding="utf-8",
                                                             errors="replace")):
            if key == "revision":
                try:
                    found.add(ast.literal_eval(value))
                except (ValueError, SyntaxError):
                    return None
    return found or None


def ahead_versions(instance: Instance, revision: str) -> Versions | None:
    """The versions the newest catalogued backup taken at `revision` by another Dagster than
    the installed one records."""
    installed = _version("dagster")
    try:
        with pg.connection(instance.target, retries=0) as conn, conn.cursor() as cur:
            cur.execute("SELECT to_regclass('dagpg.backups') IS NOT NULL")
            if not cur.fetchone()[0]:
                return None
            cur.execute("SELECT name, manifest FROM dagpg.backups WHERE status = 'ok' AND "
                        "manifest IS NOT NULL ORDER BY finished_at DESC, name DESC")
            rows = cur.fetchall()
    except Exception as exc:  # noqa: BLE001  (a hint, never a failure of its own)
        log.debug("reading the backup catalog for a hint failed: %s", exc)
        return None
    for name, manifest in rows:
        if isinstance(manifest, str):
            manifest = json.loads(manifest)
        if (manifest.get("alembic") or {}).get("dagster") != revision:
            continue
        version = manifest.get("dagster_version")
        if version and version != installed:
            return Versions(version, manifest.get("dagster_postgres_version"), name)
    return None


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
