"""Dataset path strings, as the assets pass them: `city.gdb/parcels`, `city.gpkg/parks`, `x.shp`.

Pure path logic shared by both backends; nothing here opens a file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from arcpy_orchestration.errors import DatasetNotFoundError

CONTAINERS = (".gdb", ".gpkg")
FILES = (".shp", ".parquet")
SUMMARY_NAME = "parcel_summary.json"


@dataclass(frozen=True)
class DatasetRef:
    """Where a dataset lives: its container (.gdb folder, .gpkg/.shp/.parquet file) and layer."""

    path: str
    container: Path
    layer: str | None
    kind: str  # gdb | gpkg | shp | parquet

    @property
    def exists(self) -> bool:
        return self.container.exists()


def parse(path: str | os.PathLike) -> DatasetRef:
    """Split a dataset path into container and layer. A feature dataset level is skipped:
    `city.gdb/landbase/parcels` names the feature class `parcels`."""
    p = Path(path)
    for i, part in enumerate(p.parts):
        suffix = Path(part).suffix.lower()
        if suffix in CONTAINERS:
            rest = p.parts[i + 1:]
            return DatasetRef(str(path), Path(*p.parts[: i + 1]), rest[-1] if rest else None,
                              suffix[1:])
    if p.suffix.lower() in FILES:
        return DatasetRef(str(path), p, None, p.suffix.lower()[1:])
    raise DatasetNotFoundError(
        f"{path}: not a dataset path the pipeline can read; name a feature class in a File "
        "Geodatabase (city.gdb/parcels), a GeoPackage layer (city.gpkg/parcels), a Shapefile "
        "(.shp) or a GeoParquet file (.parquet)",
        dataset=str(path),
    )


def workspace_output(workspace: str | os.PathLike, name: str, folder_format: str) -> str:
    """The path of intermediate output `name` in the workspace.

    A .gdb or .gpkg workspace holds layers; a plain folder holds one file per output in
    `folder_format` (`parquet` for the open-source backend).
    """
    ws = Path(workspace)
    if ws.suffix.lower() in CONTAINERS:
        return str(ws / name)
    return str(ws / f"{name}.{folder_format}")


def workspace_folder(workspace: str | os.PathLike) -> Path:
    """A plain folder for files that belong beside the workspace's layers (the summary JSON)."""
    ws = Path(workspace)
    return ws.parent if ws.suffix.lower() in CONTAINERS else ws


def summary_path(workspace: str | os.PathLike) -> Path:
    ws = Path(workspace)
    if ws.suffix.lower() in CONTAINERS:
        return ws.parent / f"{ws.stem}_{SUMMARY_NAME}"
    return ws / SUMMARY_NAME


def detail_csv_path(workbook: str | os.PathLike) -> Path:
    """Where the parcel-level table goes when it is too big for the workbook: beside it."""
    wb = Path(workbook)
    return wb.with_name(f"{wb.stem}_parcels.csv")
