"""Dagster's schema revisions: where the installed Dagster's alembic scripts are, which
revision is head, whether a database is behind (an older Dagster wrote it) or ahead (a newer one
did), and the steps between two revisions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import alembic.config
    import alembic.script

# Test-only: a folder of alembic scripts (Dagster's env.py and versions, plus whatever a test
# adds, e.g. a revision that cannot apply) used instead of the installed Dagster's.
SCRIPTS_OVERRIDE_VAR = "DAGPG_TEST_DAGSTER_ALEMBIC_SCRIPTS"

EMPTY, AT_HEAD, BEHIND, AHEAD = "empty", "at head", "behind", "ahead"


@dataclass(frozen=True)
class Step:
    revision: str
    down_revision: str | None
    doc: str

    def as_dict(self) -> dict:
        return {"revision": self.revision, "from": self.down_revision, "doc": self.doc}

    def __str__(self) -> str:
        return f"{self.down_revision} -> {self.revision} ({self.doc})"


def script_location() -> str:
    """Where Dagster's alembic scripts are (its env.py and versions/)."""
    override = os.environ.get(SCRIPTS_OVERRIDE_VAR)
    if override:
        return override
    from dagpg.schema import dagster_alembic_config

    return dagster_alembic_config().get_main_option("script_location")


def alembic_config() -> alembic.config.Config:
    """A config of our own (Dagster's is cached and shared by its storages)."""
    import alembic.config

    config = alembic.config.Config()
    config.set_main_option("script_location", script_location())
    return config


def scripts() -> alembic.script.ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config())


def head() -> str:
    return scripts().get_current_head()


def classify(current: str | None, script: alembic.script.ScriptDirectory | None = None) -> str:
    """EMPTY (no Dagster schema), AT_HEAD, BEHIND (an ancestor of head) or AHEAD (unknown to
    the installed Dagster: a newer one wrote it)."""
    if current is None:
        return EMPTY
    script = script or scripts()
    if current == script.get_current_head():
        return AT_HEAD
    return BEHIND if _known(script, current) else AHEAD


def steps(current: str | None, script: alembic.script.ScriptDirectory | None = None
          ) -> list[Step]:
    """The revisions an upgrade from `current` to head applies, oldest first."""
    script = script or scripts()
    found = script.iterate_revisions(script.get_current_head(), current or "base")
    return [Step(r.revision, _down(r.down_revision), (r.doc or "").strip())
            for r in reversed(list(found))]


def _known(script, revision: str) -> bool:
    from alembic.util.exc import CommandError

    try:
        return script.get_revision(revision) is not None
    except CommandError:
        return False


def _down(value) -> str | None:
    if isinstance(value, (tuple, list)):
        return ",".join(value)
    return value
