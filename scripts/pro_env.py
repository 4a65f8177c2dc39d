"""Checks setup_dagster.ps1 runs with ArcGIS Pro's Python before it installs anything.

    python scripts/pro_env.py check-pro
        Run by arcgispro-py3's python.exe: is this ArcGIS Pro new enough for the project? One
        line naming the Pro and Python versions found and needed, exit code 1 when not.

    python scripts/pro_env.py plan --report REPORT.json --constraints OUT.txt [--allow NAME]...
        Run by the clone's python.exe after `pip install --dry-run --report REPORT.json -e .`:
        shows what pip would install, upgrade or downgrade, and refuses (exit code 1, one line)
        when it would replace a conda package arcpy depends on, unless that package is named
        with --allow. When it accepts, it writes a pip constraints file that pins every
        package to the version shown, and every conda package arcpy depends on to the version
        installed, so the real install can do nothing but what was shown.

Standard library only, and Python 3.9 syntax: `check-pro` must be able to run under the Python
of an ArcGIS Pro too old for the project (3.0 to 3.2 ship Python 3.9).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

# requires-python in pyproject.toml (tests/test_pro_env.py keeps the two equal): dagster 1.13
# needs 3.10+, this project 3.11+.
MIN_PYTHON = (3, 11)
MAX_PYTHON = (3, 13)
# Python per ArcGIS Pro release, from Esri's "What version of Python is used in ArcGIS?" (FAQ
# 000013224, support.esri.com) and the release's "Available Python libraries" page.
PRO_PYTHON = {"3.0": "3.9.11", "3.1": "3.9.16", "3.2": "3.9.18", "3.3": "3.11", "3.4": "3.11",
              "3.5": "3.11", "3.6": "3.13", "3.7": "3.13"}
MIN_PRO = "3.3"
# Conda packages whose dependencies are arcpy's (arcgispro-py3 ships arcpy as a conda
# package; "arcgispro" is the metapackage of the environment on some releases).
ARCPY_ROOTS = ("arcpy", "arcpy-base", "arcgispro")
EXIT_REFUSED = 1


def normalize(name: str) -> str:
    """PEP 503 normalized project name: pip's and conda's spellings compare equal."""
    return re.sub(r"[-_.]+", "-", name).lower()


# ---- check-pro --------------------------------------------------------------------------

def conda_records(prefix: Path) -> list[dict]:
    """The environment's conda package records (conda-meta/*.json)."""
    records = []
    for path in sorted((prefix / "conda-meta").glob("*.json")):
        try:
            records.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue  # a broken record says nothing; conda itself would complain
    return records


def pro_version(records: list[dict]) -> str | None:
    """ArcGIS Pro's major.minor as the environment's arcpy package names it (arcpy 3.3.x)."""
    for root in ARCPY_ROOTS:
        for record in records:
            if record.get("name") == root and record.get("version"):
                return ".".join(str(record["version"]).split(".")[:2])
    return None


def check_pro(python: tuple[int, ...], records: list[dict]) -> str | None:
    """None when this Python (arcgispro-py3's) fits the project, else the one-line reason."""
    pro = pro_version(records)
    found = f"ArcGIS Pro {pro}" if pro else "this ArcGIS Pro"
    version = ".".join(str(p) for p in python[:3])
    needed = (f"Python {MIN_PYTHON[0]}.{MIN_PYTHON[1]} to {MAX_PYTHON[0]}.{MAX_PYTHON[1]}: "
              f"ArcGIS Pro {MIN_PRO} or newer")
    if tuple(python[:2]) < MIN_PYTHON:
        return (f"{found} ships Python {version} in arcgispro-py3; this project needs {needed} "
                "(dagster 1.13 needs Python 3.10+): upgrade ArcGIS Pro on this server")
    if tuple(python[:2]) > MAX_PYTHON:
        return (f"{found} ships Python {version} in arcgispro-py3; this project is tested with "
                f"{needed}: check the project's release notes for this ArcGIS Pro")
    return None


# ---- plan -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Change:
    name: str  # as pip's report spells it
    old: str | None  # installed version, None when new
    new: str
    conda: bool  # the installed copy came from a conda package
    arcpy: bool  # ... that arcpy depends on
    direct: bool  # a local project or URL (this project, installed editable)

    @property
    def verb(self) -> str:
        if self.old is None:
            return "install"
        if self.old == self.new:
            return "reinstall"
        return "upgrade" if _key(self.new) > _key(self.old) else "downgrade"


@dataclass(frozen=True)
class Plan:
    changes: list[Change]
    refused: list[Change]
    arcpy_found: bool

    def lines(self) -> list[str]:
        out = ["pip would change this environment (pip install --dry-run --report):"]
        for c in sorted(self.changes, key=lambda c: (c.old is None, normalize(c.name))):
            versions = c.new if c.old is None or c.old == c.new else f"{c.old} -> {c.new}"
            notes = []
            if c.conda:
                notes.append("conda package" + ("; arcpy depends on it" if c.arcpy else ""))
            if c in self.refused:
                notes.append("REFUSED")
            out.append(f"  {c.verb:<9} {c.name} {versions}" +
                       (f"   ({'; '.join(notes)})" if notes else ""))
        if not self.changes:
            out.append("  nothing")
        if not self.arcpy_found:
            out.append("  (no arcpy package in conda-meta: every conda package is protected)")
        return out

    def refusal(self) -> str | None:
        if not self.refused:
            return None
        listed = ", ".join(f"{c.name} {c.old} -> {c.new}" for c in self.refused)
        names = ",".join(normalize(c.name) for c in self.refused)
        return (f"refused: pip would replace {listed}, which arcpy depends on (conda packages "
                "of the ArcGIS Pro environment); install on an ArcGIS Pro whose environment "
                f"ships these versions, or accept the risk with -AllowReplace {names}")


def record_dists(record: dict) -> set[str]:
    """The Python distributions a conda package installed, from the .dist-info/.egg-info
    folders among its files (conda and PyPI names differ, e.g. pyyaml / PyYAML)."""
    found = {normalize(record.get("name", ""))}
    for path in record.get("files", []):
        match = re.search(r"site-packages[/\\]([^/\\]+?)-[^-/\\]+\.(?:dist|egg)-info(?:[/\\]|$)",
                          path)
        if match:
            found.add(normalize(match.group(1)))
    return found


def arcpy_dependencies(records: list[dict]) -> set[str] | None:
    """Conda package names arcpy depends on, directly or not (None: no arcpy record)."""
    by_name = {r.get("name"): r for r in records}
    todo = [root for root in ARCPY_ROOTS if root in by_name]
    if not todo:
        return None
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen or name not in by_name:
            continue
        seen.add(name)
        todo.extend(spec.split()[0] for spec in by_name[name].get("depends", []) if spec.split())
    return seen - set(ARCPY_ROOTS)


def make_plan(report: dict, installed: dict[str, tuple[str, str]], records: list[dict],
              allow: set[str]) -> Plan:
    """What pip's dry-run report would do to this environment, and what the policy refuses.

    `installed` maps normalized distribution names to (version, installer) as importlib
    finds them here; a distribution counts as a conda package when a conda record installed
    it and pip has not replaced it since (its INSTALLER is not pip)."""
    conda_dists: dict[str, str] = {}
    for record in records:
        for dist in record_dists(record):
            conda_dists[dist] = record.get("name", dist)
    deps = arcpy_dependencies(records)
    protected_conda = set(conda_dists.values()) if deps is None else deps
    allow = {normalize(a) for a in allow}
    changes, refused = [], []
    for item in report.get("install", []):
        meta = item.get("metadata", {})
        name, new = meta.get("name", "?"), str(meta.get("version", "?"))
        key = normalize(name)
        old, installer = installed.get(key, (None, ""))
        conda = key in conda_dists and installer.strip().lower() != "pip"
        arcpy = conda and conda_dists[key] in protected_conda
        change = Change(name, old, new, conda, arcpy, bool(item.get("is_direct")))
        changes.append(change)
        if old is not None and old != new and arcpy and key not in allow:
            refused.append(change)
    return Plan(changes, refused, deps is not None)


def constraints(plan: Plan, installed: dict[str, tuple[str, str]],
                records: list[dict]) -> list[str]:
    """Pins for the real install: every package at the version shown, and every conda
    package arcpy depends on that the plan does not change at the version installed."""
    pins = {normalize(c.name): c.new for c in plan.changes if not c.direct}
    deps = arcpy_dependencies(records)
    for record in records:
        if deps is not None and record.get("name") not in deps:
            continue
        for dist in record_dists(record):
            if dist in installed and dist not in pins and _is_version(installed[dist][0]):
                pins[dist] = installed[dist][0]
    return [f"{name}=={version}" for name, version in sorted(pins.items())]


def installed_here() -> dict[str, tuple[str, str]]:
    """Distributions this interpreter sees: normalized name -> (version, installer)."""
    from importlib import metadata

    found: dict[str, tuple[str, str]] = {}
    for dist in metadata.distributions():
        name = dist.metadata.get("Name")
        if name and normalize(name) not in found:
            found[normalize(name)] = (dist.version, dist.read_text("INSTALLER") or "")
    return found


def _key(version: str) -> tuple:
    return tuple(int(p) if p.isdigit() else -1 for p in re.split(r"[.+-]", version))


def _is_version(version: str) -> bool:
    return re.fullmatch(r"\d+(\.\d+)*([abc]|rc|\.post|\.dev)?\d*", version) is not None


# ---- command line ----------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check-pro", help="is this ArcGIS Pro's Python one the project supports?")
    plan_cmd = sub.add_parser("plan", help="show and judge pip's dry-run report")
    plan_cmd.add_argument("--report", required=True, type=Path)
    plan_cmd.add_argument("--constraints", required=True, type=Path)
    plan_cmd.add_argument("--allow", action="append", default=[],
                          help="a package arcpy depends on that pip may replace anyway")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    prefix = Path(sys.prefix)
    records = conda_records(prefix)
    if args.command == "check-pro":
        problem = check_pro(tuple(sys.version_info), records)
        if problem:
            print(problem, file=sys.stderr)
            return EXIT_REFUSED
        print(f"ArcGIS Pro {pro_version(records) or '(version unknown)'}, Python "
              f"{sys.version.split()[0]} in {prefix}: supported")
        return 0
    try:
        report = json.loads(args.report.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        print(f"{args.report}: cannot read pip's report ({exc}); re-run the dry run",
              file=sys.stderr)
        return EXIT_REFUSED
    installed = installed_here()
    plan = make_plan(report, installed, records, set(args.allow))
    print("\n".join(plan.lines()))
    refusal = plan.refusal()
    if refusal:
        print(refusal, file=sys.stderr)
        return EXIT_REFUSED
    args.constraints.write_text("\n".join(constraints(plan, installed, records)) + "\n",
                                encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
