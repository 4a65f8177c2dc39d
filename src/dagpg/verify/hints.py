"""Commands that verify's findings print, written so they work when pasted as printed."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

from dagpg.verify.services import ServiceHome

WORKSPACE_YAML = "workspace.yaml"


def on_windows() -> bool:
    """Whether the hints are for Windows (PowerShell, .exe names): the machine verify runs on."""
    return os.name == "nt"


def schedule_start(names: list[str], webserver: ServiceHome, home: Path | None) -> str:
    """`dagster schedule start NAME -w <workspace.yaml>` for each name, joined by ` && `.

    `dagster schedule start NAME` alone fails ("No arguments given and no [tool.dagster] block in
    pyproject.toml found"): it needs the workspace the services load, and DAGSTER_HOME.
    """
    workspace = workspace_of(webserver, home)
    where = _quote(str(workspace)) if workspace else "<workspace.yaml>"
    prefix = ""
    if home is not None and not on_windows() and os.environ.get("DAGSTER_HOME") != str(home):
        prefix = f"DAGSTER_HOME={_quote(str(home))} "
    program = _dagster_program()
    if on_windows() and program.startswith('"'):
        # PowerShell runs a quoted path only through the call operator (about_Operators, "&").
        program = f"& {program}"
    # On Windows the setup script's shell is Windows PowerShell 5.1, which has no `&&` (pipeline
    # chain operators came with PowerShell 7: about_Pipeline_Chain_Operators); `;` works in both.
    joiner = "; " if on_windows() else " && "
    return joiner.join(f"{prefix}{program} schedule start {_quote(n)} -w {where}"
                       for n in names)


def workspace_of(webserver: ServiceHome, home: Path | None) -> Path | None:
    """The workspace file the webserver loads: its Servy command line's -w, else
    <DAGSTER_HOME>/workspace.yaml (this project's layout) when it exists."""
    tokens = _tokens(webserver.parameters)
    for i, token in enumerate(tokens):
        name, eq, value = token.partition("=")
        if name in ("-w", "--workspace"):
            value = value if eq else (tokens[i + 1] if i + 1 < len(tokens) else "")
            if value:
                return Path(value)
    if home is not None and (home / WORKSPACE_YAML).is_file():
        return home / WORKSPACE_YAML
    return None


def _dagster_program() -> str:
    """`dagster` when PATH finds the one installed beside dagpg, else that one's full path."""
    name = "dagster.exe" if on_windows() else "dagster"
    beside = Path(sys.executable).parent / name
    if not beside.exists():
        return "dagster"
    found = shutil.which("dagster")
    if found and Path(found).resolve() == beside.resolve():
        return "dagster"
    return _quote(str(beside))


def _tokens(parameters: str) -> list[str]:
    try:
        return [t.strip('"') for t in shlex.split(parameters or "", posix=False)]
    except ValueError:
        return []


def _quote(text: str) -> str:
    if on_windows():
        return f'"{text}"' if " " in text else text
    return shlex.quote(text)
