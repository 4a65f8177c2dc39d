"""What a new user does: the README's "Run it" steps, to the letter, end in `dagpg verify` exit 0.

The commands are read from the README itself, so the README cannot drift from what works. They
run in a copy of the project (as a fresh clone would be, sharing this .venv), with two changes a
shared test machine needs: free ports instead of 5432 and 3000, and a small sample city. The
quickstart starts its own PostgreSQL (`dagpg db up`) in the copy, as it does for a user; the
webserver and the daemon are started as the README says and left running while verify is
retried, since it passes only once the daemon has sent its first heartbeats.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from dagpg.localdb import _hand_to_server_user, free_port
from dagpg.pgbin import find_program
from tests import pgharness, processes

pytestmark = pytest.mark.slow

PROJECT_DIR = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)
SERVICES = (".venv/bin/dagster-webserver", ".venv/bin/dagster-daemon")


def readme_steps() -> list[str]:
    """The commands in the README's "Run it" section, in order, comments dropped."""
    text = (PROJECT_DIR / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Run it\n", 1)[1].split("\n## ", 1)[0]
    steps, pending = [], ""
    for block in re.findall(r"```bash\n(.*?)```", section, re.S):
        for line in block.splitlines():
            command = line.split("  #", 1)[0].strip()
            if command.endswith("\\"):  # continued on the next line, as a shell reads it
                pending += command[:-1].strip() + " "
            elif command or pending:
                steps.append((pending + command).strip())
                pending = ""
    return steps


def copy_project(root: Path, *, pg_port: int, web_port: int) -> Path:
    """A clone's files in `root`; .venv is this one (bootstrap.sh finds it up to date)."""
    for folder in ("scripts", "src", "config", "migrations"):
        shutil.copytree(PROJECT_DIR / folder, root / folder,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(PROJECT_DIR / "pyproject.toml", root / "pyproject.toml")
    (root / "dagster_home").mkdir()
    shutil.copy2(PROJECT_DIR / "dagster_home" / "workspace.yaml", root / "dagster_home")
    committed = (PROJECT_DIR / "dagster_home" / "dagster.yaml").read_text(encoding="utf-8")
    assert "port: 5432" in committed
    (root / "dagster_home" / "dagster.yaml").write_text(
        committed.replace("port: 5432", f"port: {pg_port}"), encoding="utf-8")
    config = yaml.safe_load((root / "config" / "config.yml").read_text(encoding="utf-8"))
    config["park_access"]["sample_parcels"] = 300
    config["dagpg"]["webserver"]["port"] = web_port
    (root / "config" / "config.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    (root / ".venv").symlink_to(VENV, target_is_directory=True)
    return root


@pytest.fixture
def clone():
    try:
        find_program("initdb")
    except Exception as exc:  # noqa: BLE001
        pgharness.unavailable(str(exc))
    digest = hashlib.sha256((PROJECT_DIR / "pyproject.toml").read_bytes()).hexdigest()[:16]
    if not (VENV / f".installed-{digest}").exists():
        pytest.fail(f"{VENV} is not bootstrapped for this pyproject.toml; run "
                    "scripts/bootstrap.sh (quickstart.sh would reinstall the project)")
    # A folder the server's OS user can enter (as root, PostgreSQL runs as `postgres`), as a
    # clone under /home or /srv is.
    root = Path(tempfile.mkdtemp(prefix="dagpg-readme-"))
    root.chmod(0o755)
    _hand_to_server_user(root)
    yield root / "project"
    subprocess.run([str(VENV / "bin" / "dagpg"), "db", "down", "--silent", "--dagster-home",
                    str(root / "project" / "dagster_home")], capture_output=True)
    shutil.rmtree(root, ignore_errors=True)


def code_server_dirs(service: subprocess.Popen) -> list[str]:
    """The `-d` of every `dagster api grpc` code server below the service (`ps`, via /proc)."""
    parents, argvs = {}, {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                stat = (proc / "stat").read_text()
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            parents[int(proc.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            argvs[int(proc.name)] = [a.decode(errors="replace") for a in argv if a]
    below, frontier = set(), {service.pid}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - below
        below |= frontier
    found = []
    for pid in below:
        argv = argvs.get(pid, [])
        if "api" in argv and "grpc" in argv and "-d" in argv:
            found.append(argv[argv.index("-d") + 1])
    return found


def test_the_readme_path_ends_in_a_healthy_verify(clone):
    steps = readme_steps()
    assert steps[0].endswith("bash scripts/quickstart.sh")
    assert [s.split()[0] for s in steps[1:]] == [*SERVICES, ".venv/bin/dagpg",
                                                ".venv/bin/dagpg"], steps
    assert steps[-2:] == [".venv/bin/dagpg verify --wait 120", ".venv/bin/dagpg db down"]

    pg_port, web_port = free_port(), free_port()
    project = copy_project(clone, pg_port=pg_port, web_port=web_port)
    env = {k: v for k, v in os.environ.items()
           if k not in ("DAGSTER_HOME", "DAGPG_CONFIG", "PROJECT_CONFIG", "PROJECT_ENV",
                        "DAGPG_PGDATA", pgharness.PASSWORD_VAR)}
    # The copy's packages, as in a clone (the installed ones are this checkout's, editable).
    env["PYTHONPATH"] = str(project / "src")
    # "DAGSTER_PG_PASSWORD=choose-a-password bash scripts/quickstart.sh", with a fresh password.
    password = secrets.token_urlsafe(12)
    quickstart = steps[0].replace("choose-a-password", password)
    done = subprocess.run(["bash", "-c", quickstart], cwd=project, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert re.search(r"^run \S+: SUCCESS \(stored by PostgresRunStorage\)$", done.stdout, re.M)
    assert f"workbook: {project}/reports/park_access_summary.xlsx" in done.stdout
    assert re.search(r"^backup +\d{8}T\d{6}Z", done.stdout, re.M), done.stdout
    assert password not in done.stdout + done.stderr

    # "Afterwards, with export DAGSTER_HOME=$PWD/dagster_home DAGSTER_PG_PASSWORD=..."
    env.update(DAGSTER_HOME=str(project / "dagster_home"), DAGSTER_PG_PASSWORD=password)
    services = []
    try:
        for step in steps[1:3]:
            argv = shlex.split(step.replace("-p 3000", f"-p {web_port}"))
            log = (clone.parent / f"{Path(argv[0]).name}.log").open("wb")
            services.append(subprocess.Popen(argv, cwd=project, env=env, stdout=log,
                                             stderr=subprocess.STDOUT, start_new_session=True))
            services[-1].log_path = log.name  # type: ignore[attr-defined]

        for service in services:
            processes.wait_for(lambda s=service: code_server_dirs(s), 120,
                               "a code server", service)
        # The README's verify, once: its --wait covers the daemon's first heartbeats.
        healthy = subprocess.run(shlex.split(steps[3]) + ["--json"], cwd=project, env=env,
                                 capture_output=True, text=True, timeout=300)
        assert healthy.returncode == 0, healthy.stdout[-3000:] + healthy.stderr[-2000:]
        checks = {c["name"]: c for c in json.loads(healthy.stdout)["checks"]}
        assert checks["operations.schedules"]["data"] == {
            "park_access_daily": ["RUNNING"], "instance_backup_nightly": ["RUNNING"]}
        assert checks["operations.backup"]["status"] == "ok"
        # Nothing fails; the one warning: no keeper, which runs as a service (`dagpg watch`
        # under Servy, systemd or supervisord), not in the README's local steps.
        assert {n: c["status"] for n, c in checks.items() if c["status"] in ("fail", "warn")} \
            == {"keeper.heartbeat": "warn"}, checks

        # The code servers' working directory is the project, a folder that exists (with a
        # relative -w Dagster would make it dagster_home/dagster_home).
        for service in services:
            dirs = code_server_dirs(service)
            assert dirs and all(Path(d).resolve() == project.resolve() for d in dirs), dirs
    finally:
        for service in services:
            processes.stop(service)

    down = subprocess.run(shlex.split(steps[4]), cwd=project, env=env, capture_output=True,
                          text=True, timeout=120)
    assert down.returncode == 0, down.stderr
    status = subprocess.run([".venv/bin/dagpg", "db", "status"], cwd=project, env=env,
                            capture_output=True, text=True)
    assert status.returncode == 3, status.stdout
