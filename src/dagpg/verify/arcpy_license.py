"""Where the GIS backend is ArcPy: does arcpy import, with a license, in the services' Python?

arcpy outside ArcGIS Pro needs a license available to the account that runs it; with a Named
User license that account must have signed in to ArcGIS Pro with "Sign in automatically"
checked (Esri, "Schedule geoprocessing tools": "This is required for the tool to run outside
ArcGIS Pro"). A service that lacks one still starts and loads the definitions (the pipeline
imports arcpy only in a run), so without this check the first scheduled run is what fails.

The check runs a small probe with the daemon's own Python (the daemon launches the runs) and
the daemon's environment from its Servy config: dagpg imports neither arcpy nor the pipeline.
The probe prints `arcpy.ProductInfo()` ("NotInitialized" when no license is set; ArcView,
ArcEditor, ArcInfo for Basic, Standard, Advanced: Esri, ProductInfo) and
`arcpy.GetInstallInfo()["Version"]`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path, PurePath, PureWindowsPath

from dagpg.settings import KitSettings
from dagpg.verify.checks import FAIL, OK, SKIP, CheckResult
from dagpg.verify.services import CURRENT_ENVIRONMENT, ServiceHome

NAME, TITLE = "arcpy.license", "ArcPy license"
LEVELS = {"ArcView": "Basic", "ArcEditor": "Standard", "ArcInfo": "Advanced"}
FIX = ("sign in to ArcGIS Pro once as that account with 'Sign in automatically' checked "
       "(Named User), or give it a Single Use or Concurrent Use license; see the README, "
       "'The service account and the ArcGIS license'")

# Standard library only: it runs in whatever Python the services use.
PROBE = r"""
import getpass, importlib.util, json, sys
out = {"python": sys.executable, "arcpy": importlib.util.find_spec("arcpy") is not None}
try:
    out["user"] = getpass.getuser()
except Exception:
    out["user"] = None
if out["arcpy"]:
    try:
        import arcpy
        out["product"] = arcpy.ProductInfo()
        out["version"] = (arcpy.GetInstallInfo() or {}).get("Version")
    except BaseException as exc:
        text = str(exc).strip()
        out["error"] = type(exc).__name__ + (": " + text.splitlines()[0] if text else "")
print("DAGPG-ARCPY " + json.dumps(out))
"""
MARKER = "DAGPG-ARCPY "


def services_python(service: ServiceHome) -> Path | None:
    """The Python the service runs: this one for the current environment, else the one
    beside its program (env\\Scripts\\dagster-daemon.exe -> env\\python.exe in a conda
    environment, env\\Scripts\\python.exe in a venv, env/bin/python on Linux)."""
    if service.source == CURRENT_ENVIRONMENT or not service.executable:
        return Path(sys.executable)
    exe = service.executable.strip().strip('"')
    program: PurePath = PureWindowsPath(exe) if "\\" in exe else PurePath(exe)
    if program.stem.lower() in ("python", "pythonw", "python3"):
        candidates = [program]
    else:
        names = ("python.exe", "python") if isinstance(program, PureWindowsPath) else ("python",)
        candidates = [folder / n for folder in (program.parent, program.parent.parent)
                      for n in names]
    return next((Path(str(c)) for c in candidates if Path(str(c)).is_file()), None)


def check(settings: KitSettings, daemon: ServiceHome) -> CheckResult | None:
    """The ArcPy license check, or None where it does not apply (check: auto and no arcpy in
    the services' Python, or check: off)."""
    mode, timeout = settings.arcpy.check, settings.arcpy.timeout_s
    if mode == "off":
        return None
    python = services_python(daemon)
    if python is None:
        status = FAIL if mode == "required" else SKIP
        return CheckResult(
            NAME, TITLE, status,
            f"cannot find the Python of {daemon.name} ({daemon.executable}) on this machine; "
            "run dagpg verify on the server with the service's exported Servy config",
            {"executable": daemon.executable})
    if (mode == "auto" and python == Path(sys.executable) and not daemon.environment
            and importlib.util.find_spec("arcpy") is None):
        return None  # this very Python, without arcpy: no child process needed to know it
    env = {**os.environ, **daemon.environment}
    env.pop("DAGSTER_PG_PASSWORD", None)  # the probe needs no secret
    data = {"python": str(python), "service": daemon.name}
    try:
        done = subprocess.run([str(python), "-c", PROBE], env=env, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return CheckResult(
            NAME, TITLE, FAIL,
            f"importing arcpy in {python} took longer than {timeout:g} s (dagpg.arcpy."
            "timeout_s): is the license server or ArcGIS Online reachable from this server?",
            data)
    except OSError as exc:
        return CheckResult(NAME, TITLE, FAIL, f"cannot run {python}: {exc.strerror or exc}",
                           data)
    found = _probe_output(done.stdout)
    if found is None:
        last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        return CheckResult(NAME, TITLE, FAIL, f"{python} could not run the probe: {last}",
                           data)
    data.update(found)
    user = found.get("user") or "this account"
    if not found.get("arcpy"):
        if mode == "auto":
            return None
        return CheckResult(
            NAME, TITLE, FAIL,
            f"arcpy does not import in {python} (dagpg.arcpy.check: required): run the "
            "services in the clone of ArcGIS Pro's environment that setup_dagster.ps1 makes",
            data)
    if found.get("error"):
        return CheckResult(NAME, TITLE, FAIL,
                           f"import arcpy fails in {python} as {user}: {found['error']}; {FIX}",
                           data)
    product = found.get("product") or "NotInitialized"
    if product == "NotInitialized":
        return CheckResult(NAME, TITLE, FAIL,
                           f"arcpy imports in {python} but no ArcGIS license is available to "
                           f"{user} (ProductInfo: NotInitialized); {FIX}", data)
    level = LEVELS.get(product, product)
    version = f" {found['version']}" if found.get("version") else ""
    return CheckResult(
        NAME, TITLE, OK,
        f"arcpy{version} imports in {python} with a {level} license ({product}) for {user}",
        data)


def _probe_output(stdout: str) -> dict | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith(MARKER):
            try:
                return json.loads(line[len(MARKER):])
            except ValueError:
                return None
    return None
