"""scripts/pro_env.py, the checks setup_dagster.ps1 runs with ArcGIS Pro's Python before it
installs anything: the ArcGIS Pro / Python version gate, and the install policy judged on a
real `pip install --dry-run --report` made here against a stand-in for a Pro 3.3 clone.

The stand-in is a real (pip-less) virtual environment whose site-packages hold the distributions
a clone would (typing_extensions 4.9.0 and pydantic 2.4.2, the versions the issue found in
Pro 3.3 and 3.4, installed by conda) and a conda-meta folder describing them. ASSUMPTION:
which conda packages arcpy depends on is made up for the test (arcpy -> arcgis -> pydantic ->
typing_extensions); on the server the script reads the clone's own conda-meta.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

PROJECT_DIR = Path(__file__).resolve().parents[1]
SCRIPT = PROJECT_DIR / "scripts" / "pro_env.py"
spec = importlib.util.spec_from_file_location("pro_env", SCRIPT)
pro_env = importlib.util.module_from_spec(spec)
sys.modules["pro_env"] = pro_env
spec.loader.exec_module(pro_env)

SITE = Path(sysconfig.get_paths()["purelib"]).relative_to(sys.prefix)  # lib/python3.X/...


def record(name, version, depends=(), dists=()):
    return {"name": name, "version": version, "depends": list(depends),
            "files": [f"{SITE}/{d}-{v}.dist-info/METADATA" for d, v in dists]}


PRO_33 = [
    record("python", "3.11.8"),
    record("arcpy", "3.3.0", ["arcgis 2.3.*", "numpy >=1.24", "python >=3.11,<3.12"]),
    record("arcgis", "2.3.0", ["pydantic >=2", "python >=3.11"]),
    record("pydantic", "2.4.2", ["typing_extensions >=4.6.1"], [("pydantic", "2.4.2")]),
    record("typing_extensions", "4.9.0", [], [("typing_extensions", "4.9.0")]),
    record("pyyaml", "6.0.1", ["python >=3.11"], [("PyYAML", "6.0.1")]),  # not arcpy's
]


def test_the_python_bounds_are_pyproject_requires_python():
    spec_ = tomllib.loads((PROJECT_DIR / "pyproject.toml").read_text())["project"][
        "requires-python"]
    assert spec_ == (f">={pro_env.MIN_PYTHON[0]}.{pro_env.MIN_PYTHON[1]},"
                     f"<{pro_env.MAX_PYTHON[0]}.{pro_env.MAX_PYTHON[1] + 1}")


def test_the_script_parses_as_python_39():
    """check-pro runs under the Python 3.9 of ArcGIS Pro 3.0-3.2 to tell the user so."""
    ast.parse(SCRIPT.read_text(), feature_version=(3, 9))


@pytest.mark.parametrize(("pro", "supported"), [
    ("3.0", False), ("3.1", False), ("3.2", False), ("3.3", True), ("3.4", True),
    ("3.5", True), ("3.6", True), ("3.7", True)])
def test_each_pro_release_against_the_minimum(pro, supported):
    python = tuple(int(p) for p in pro_env.PRO_PYTHON[pro].split("."))
    problem = pro_env.check_pro(python, [record("arcpy", f"{pro}.0")])
    assert (problem is None) == supported, problem


def test_a_pro_too_old_is_one_line_naming_both_versions():
    assert pro_env.check_pro((3, 9, 18), [record("arcpy", "3.2.2")]) == (
        "ArcGIS Pro 3.2 ships Python 3.9.18 in arcgispro-py3; this project needs Python 3.11 "
        "to 3.13: ArcGIS Pro 3.3 or newer (dagster 1.13 needs Python 3.10+): upgrade ArcGIS "
        "Pro on this server")


def test_a_conda_package_is_known_by_its_python_distribution_name():
    assert pro_env.record_dists(PRO_33[-1]) == {"pyyaml"}
    # numpy has no record here: only installed conda packages count
    assert pro_env.arcpy_dependencies(PRO_33) == {"arcgis", "python", "pydantic",
                                                  "typing_extensions"}
    assert pro_env.arcpy_dependencies(PRO_33[2:]) is None  # no arcpy record


# ---- a real dry run against a stand-in Pro 3.3 clone ------------------------------------

@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """A virtual environment laid out like a Pro 3.3 clone, and pip's report of installing
    dagster-shared 1.13.27 and pydantic>=2.6 (this project's requirements that collide)."""
    env = tmp_path_factory.mktemp("clone")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    python = env / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; "
                                "print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    for dist, version in (("typing_extensions", "4.9.0"), ("pydantic", "2.4.2"),
                          ("PyYAML", "6.0.1")):
        info = site / f"{dist}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\n"
                                       f"Version: {version}\n")
        (info / "INSTALLER").write_text("conda\n")
        (info / "RECORD").write_text("")
    meta = env / "conda-meta"
    meta.mkdir()
    for r in PRO_33:
        (meta / f"{r['name']}-{r['version']}-0.json").write_text(json.dumps(r))
    report = env / "report.json"
    done = dry_run(python, report)
    assert done.returncode == 0, done.stderr[-2000:]
    return python, report


REQUIREMENTS = ["dagster-shared==1.13.27", "pydantic>=2.6,<3"]


def dry_run(python: Path, report: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--dry-run",
         "--quiet", "--disable-pip-version-check", "--report", str(report), *extra,
         *REQUIREMENTS], capture_output=True, text=True, timeout=300)


def run_plan(python: Path, report: Path, constraints: Path, *allow: str):
    argv = [str(python), str(SCRIPT), "plan", "--report", str(report), "--constraints",
            str(constraints)]
    for name in allow:
        argv += ["--allow", name]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


@pytest.mark.slow
def test_replacing_what_arcpy_depends_on_is_refused_and_shown_first(clone, tmp_path):
    python, report = clone
    new = {i["metadata"]["name"]: i["metadata"]["version"]
           for i in json.loads(report.read_text())["install"]}
    constraints = tmp_path / "constraints.txt"
    done = run_plan(python, report, constraints)
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"refused: pip would replace pydantic 2.4.2 -> {new['pydantic']}, typing_extensions "
        f"4.9.0 -> {new['typing_extensions']}, which arcpy depends on (conda packages of the "
        "ArcGIS Pro environment); install on an ArcGIS Pro whose environment ships these "
        "versions, or accept the risk with -AllowReplace pydantic,typing-extensions")
    lines = done.stdout.splitlines()
    assert lines[0] == "pip would change this environment (pip install --dry-run --report):"
    assert (f"  upgrade   typing_extensions 4.9.0 -> {new['typing_extensions']}   (conda "
            "package; arcpy depends on it; REFUSED)") in lines
    assert "  install   dagster-shared 1.13.27" in lines
    assert not any("PyYAML" in line for line in lines)  # conda's 6.0.1 satisfies dagster
    assert not constraints.exists()


@pytest.mark.slow
def test_allowed_replacements_pin_the_real_install_to_the_plan(clone, tmp_path):
    python, report = clone
    constraints = tmp_path / "constraints.txt"
    done = run_plan(python, report, constraints, "typing-extensions", "Pydantic")
    assert done.returncode == 0, done.stderr
    assert "REFUSED" not in done.stdout
    pins = dict(line.split("==") for line in constraints.read_text().split())
    new = {pro_env.normalize(i["metadata"]["name"]): i["metadata"]["version"]
           for i in json.loads(report.read_text())["install"]}
    assert {k: pins[k] for k in new} == new  # every package at the version shown
    assert "pyyaml" not in pins  # conda's, untouched by pip and not arcpy's: left free
    # pip resolves to the same plan under the pins: the install can only do what was shown.
    again = tmp_path / "again.json"
    done = dry_run(python, again, "--constraint", str(constraints))
    assert done.returncode == 0, done.stderr[-2000:]

    def versions(path):
        return {i["metadata"]["name"]: i["metadata"]["version"]
                for i in json.loads(path.read_text())["install"]}
    assert versions(again) == versions(report)


def test_a_package_pip_already_replaced_is_not_a_conda_package_any_more():
    report = {"install": [{"metadata": {"name": "typing_extensions", "version": "4.16.0"}}]}
    installed = {"typing-extensions": ("4.12.2", "pip\n")}  # an earlier, allowed run
    plan = pro_env.make_plan(report, installed, PRO_33, set())
    assert plan.refused == [] and plan.changes[0].verb == "upgrade"
    assert not plan.changes[0].conda


def test_without_an_arcpy_record_every_conda_package_is_protected():
    report = {"install": [{"metadata": {"name": "PyYAML", "version": "6.0.4"}}]}
    installed = {"pyyaml": ("6.0.1", "conda")}
    plan = pro_env.make_plan(report, installed, [r for r in PRO_33 if r["name"] != "arcpy"],
                             set())
    assert [c.name for c in plan.refused] == ["PyYAML"]
    assert plan.lines()[-1] == (
        "  (no arcpy package in conda-meta: every conda package is protected)")


def test_check_pro_from_the_command_line(clone):
    python, _report = clone
    done = subprocess.run([str(python), str(SCRIPT), "check-pro"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"ArcGIS Pro 3\.3, Python 3\.\d+\.\d+ in \S+: supported\n", done.stdout)
