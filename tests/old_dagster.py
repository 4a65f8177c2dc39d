"""An older Dagster in a second virtual environment, for the upgrade tests.

Created once per version and kept outside the work tree ($DAGPG_TEST_CACHE, default
~/.cache/dagpg-test/venv-dagster-<version>-py<major><minor>), so repeated runs take no time; CI
creates it fresh (about 30 s: pip installs the pair from the package index). A lock keeps two
test runs from building it at once; a marker file written last tells a finished environment
from one a killed build left, which is built again.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# The older release pair: dagster-postgres is versioned 0.(minor+16).patch alongside dagster.
OLD_DAGSTER = "1.11.16"
OLD_DAGSTER_POSTGRES = "0.27.16"
PROJECT_DIR = Path(__file__).resolve().parents[1]
HISTORY_SCRIPT = Path(__file__).with_name("old_dagster_history.py")


@dataclass(frozen=True)
class OldVenv:
    path: Path
    version: str
    created_in_s: float | None  # None: found in the cache

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    def run(self, argv: list[str], env: dict[str, str], cwd: Path,
            timeout: float = 300) -> subprocess.CompletedProcess:
        """Run the old environment's python; dagpg from this work tree is importable (as a
        server's old install would have it), Dagster is the old one."""
        full = {**os.environ, **env, "PYTHONPATH": str(PROJECT_DIR / "src")}
        full.pop("VIRTUAL_ENV", None)
        result = subprocess.run([str(self.python), *argv], env=full, cwd=cwd,
                                capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} failed in the Dagster {self.version} "
                                 f"environment:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result

    def dagpg(self, *args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
        return self.run(["-c", "from dagpg.cli import main; main()", *args], env, cwd)

    def write_history(self, env: dict[str, str], cwd: Path) -> dict:
        out = self.run([str(HISTORY_SCRIPT)], env, cwd).stdout
        return json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1])


def cache_dir() -> Path:
    return Path(os.environ.get("DAGPG_TEST_CACHE") or Path.home() / ".cache" / "dagpg-test")


def old_venv(version: str = OLD_DAGSTER, postgres: str = OLD_DAGSTER_POSTGRES) -> OldVenv:
    """The cached environment with dagster==`version` and dagster-postgres==`postgres`."""
    tag = f"py{sys.version_info.major}{sys.version_info.minor}"
    path = cache_dir() / f"venv-dagster-{version}-{tag}"
    marker = path / ".dagpg-complete"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.is_file():
            return OldVenv(path, version, None)
        started = time.monotonic()
        shutil.rmtree(path, ignore_errors=True)
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(path)], check=True, capture_output=True)
        pip = subprocess.run(
            [str(path / "bin" / "python"), "-m", "pip", "install", "--quiet",
             "--disable-pip-version-check", f"dagster=={version}",
             f"dagster-postgres=={postgres}"],
            capture_output=True, text=True, timeout=900)
        if pip.returncode != 0:
            raise AssertionError(f"installing dagster=={version} failed:\n{pip.stderr[-3000:]}")
        seconds = time.monotonic() - started
        marker.write_text(f"{seconds:.1f}\n")
        return OldVenv(path, version, seconds)
