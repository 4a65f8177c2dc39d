"""GIS backends: ArcPy where it imports (or config says so), else the open-source stack.

Only the selected backend's module is imported: arcpy is never imported unless chosen, and the
arcpy backend runs without geopandas.
"""

from __future__ import annotations

import importlib.util

from arcpy_orchestration.errors import BackendUnavailableError
from arcpy_orchestration.gis.base import Backend

CHOICES = ("auto", "arcpy", "open_source")
_OPEN_SOURCE_NEEDS = ("geopandas", "shapely", "pyproj", "pyogrio", "pyarrow")


def resolve_backend_name(choice: str = "auto") -> str:
    """`arcpy` or `open_source` for a config choice, without importing either stack."""
    if choice not in CHOICES:
        raise BackendUnavailableError(
            f"gis.backend {choice!r} is not a backend; use one of: {', '.join(CHOICES)}")
    has_arcpy = importlib.util.find_spec("arcpy") is not None
    if choice == "arcpy" and not has_arcpy:
        raise BackendUnavailableError(
            "gis.backend is arcpy but arcpy does not import here; run in ArcGIS Pro's Python "
            "environment or set gis.backend: open_source in config/config.yml")
    if choice == "arcpy" or (choice == "auto" and has_arcpy):
        return "arcpy"
    missing = [m for m in _OPEN_SOURCE_NEEDS if importlib.util.find_spec(m) is None]
    if missing:
        raise BackendUnavailableError(
            f"the open-source GIS backend needs {', '.join(missing)}, which do not import here; "
            "install them with `pip install -e '.[gis]'` or run where arcpy is available")
    return "open_source"


def get_backend(choice: str | Backend = "auto") -> Backend:
    """The backend object for a config choice (or a backend object, returned as is)."""
    if not isinstance(choice, str):
        return choice
    name = resolve_backend_name(choice)
    if name == "arcpy":
        from arcpy_orchestration.gis.arcpy_backend import ArcpyBackend

        return ArcpyBackend()
    from arcpy_orchestration.gis.open_source import OpenSourceBackend

    return OpenSourceBackend()
