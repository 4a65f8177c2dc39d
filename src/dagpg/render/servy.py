"""Servy service files: render the two Dagster services, read any Servy export back.

The format is Servy's own export/import format (`servy-cli export|import --config=xml`): an
XmlSerializer dump of its `ServiceDto`, root element `<ServiceDto>`, one element per field,
enums as integers, booleans as `true`/`false`. Checked against Servy's source
(`src/Servy.Core/DTOs/ServiceDto.cs`, `EnvironmentVariables/EnvironmentVariableParser.cs`,
`EscapedTokenizer.cs`, `src/Servy.CLI/Commands/ImportServiceCommand.cs`) and its wiki pages
"Export / Import Services", "Environment Variables", "Logging & Log Rotation" and
"Health Monitoring & Recovery" (the wiki as of Servy 10.4); see SERVY_VERSION_CHECKED.

EnvironmentVariables is one string: `KEY=value` records separated by unescaped `;` (or line
breaks); a backslash escapes `=`, `;`, `"` and `\\` and is literal before anything else; one
pair of unescaped quotes around a value is stripped; `%VAR%` is expanded when the service
starts and `%%` is a literal `%` (Servy 8.5+).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dagpg.render.errors import RenderError, ServyConfigError
from dagpg.render.layout import Layout
from dagpg.render.units import units

SERVY_VERSION_CHECKED = "10.4"
ROOT_ELEMENT = "ServiceDto"

# Every field Servy's import accepts (wiki "Export / Import Services", Servy 10.4, in its order).
SERVY_FIELDS: tuple[str, ...] = (
    "Name", "DisplayName", "Description", "ExecutablePath", "StartupDirectory", "Parameters",
    "StartupType", "Priority", "CpuAffinity", "StdoutPath", "StderrPath", "StartTimeout",
    "StopTimeout", "EnableConsoleUI", "EnableSizeRotation", "RotationSize", "EnableDateRotation",
    "DateRotationType", "UseLocalTimeForRotation", "MaxRotations", "EnableDebugLogs",
    "EnableHealthMonitoring", "HeartbeatInterval", "MaxFailedChecks", "RecoveryAction",
    "RecoveryOnCleanExit", "MaxRestartAttempts", "HeartbeatUrl", "HeartbeatUrlTimeoutSeconds",
    "EnableHeartbeatUrlFlags", "FailureProgramPath", "FailureProgramStartupDirectory",
    "FailureProgramParameters", "EnvironmentVariables", "AllowOverriddenRuntimeVars",
    "ServiceDependencies", "PreLaunchExecutablePath", "PreLaunchStartupDirectory",
    "PreLaunchParameters", "PreLaunchEnvironmentVariables", "PreLaunchStdoutPath",
    "PreLaunchStderrPath", "PreLaunchTimeoutSeconds", "PreLaunchRetryAttempts",
    "PreLaunchIgnoreFailure", "PostLaunchExecutablePath", "PostLaunchStartupDirectory",
    "PostLaunchParameters", "PreStopExecutablePath", "PreStopStartupDirectory",
    "PreStopParameters", "PreStopTimeoutSeconds", "PreStopLogAsError", "PostStopExecutablePath",
    "PostStopStartupDirectory", "PostStopParameters",
)

# Enums as Servy stores them (Servy.Core.Enums; wiki tables StartupType, DateRotationType, ...).
STARTUP_AUTOMATIC = 2
STARTUP_DELAYED = 5  # AutomaticDelayedStart (src/Servy.Core/Enums/ServiceStartType.cs)
DATE_ROTATION_DAILY = 0
RECOVERY_RESTART_SERVICE = 1

_ESCAPED_BY_BACKSLASH = '=;"\\'


@dataclass(frozen=True)
class ServyService:
    """One service as a Servy file describes it (values as written; %VAR% not expanded)."""

    name: str
    executable: str
    parameters: str = ""
    startup_directory: str = ""
    environment: dict[str, str] = field(default_factory=dict)
    dependencies: tuple[str, ...] = ()
    fields: dict[str, str] = field(default_factory=dict)
    path: Path | None = None


def read_service(path: str | Path) -> ServyService:
    """Read a Servy service file: the XML `dagpg render servy` writes, or `servy-cli export`'s
    XML or JSON. Raises ServyConfigError (one line, naming the file) when it cannot."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ServyConfigError(f"{path}: no such file; render it with `dagpg render servy` or "
                               "export it with `servy-cli export --config=xml`") from None
    except OSError as exc:
        raise ServyConfigError(f"{path}: cannot be read ({exc.strerror}); check the path") from None
    fields = _json_fields(path, data) if _looks_like_json(data) else _xml_fields(path, data)
    for required in ("Name", "ExecutablePath"):
        if not fields.get(required, "").strip():
            raise ServyConfigError(f"{path}: {required} is missing or empty; a Servy service "
                                   "file needs Name and ExecutablePath")
    try:
        environment = parse_environment(fields.get("EnvironmentVariables", ""))
    except ValueError as exc:
        raise ServyConfigError(f"{path}: EnvironmentVariables: {exc}") from None
    deps = tuple(d.strip() for d in fields.get("ServiceDependencies", "").replace("\n", ";")
                 .split(";") if d.strip())
    return ServyService(
        name=fields["Name"].strip(), executable=fields["ExecutablePath"].strip(),
        parameters=fields.get("Parameters", ""),
        startup_directory=fields.get("StartupDirectory", ""),
        environment=environment, dependencies=deps, fields=fields, path=path,
    )


def _looks_like_json(data: bytes) -> bool:
    head = data.lstrip(b"\xef\xbb\xbf \t\r\n")
    return head.startswith(b"{")


def _xml_fields(path: Path, data: bytes) -> dict[str, str]:
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise ServyConfigError(f"{path}: not valid XML ({exc}); export it again with "
                               "`servy-cli export --config=xml`") from None
    if _local(root.tag) != ROOT_ELEMENT:
        raise ServyConfigError(f"{path}: root element is <{_local(root.tag)}>, not "
                               f"<{ROOT_ELEMENT}>; this is not a Servy service file")
    return {_local(child.tag): (child.text or "") for child in root}


def _json_fields(path: Path, data: bytes) -> dict[str, str]:
    try:
        raw = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ServyConfigError(f"{path}: not valid JSON ({exc}); export it again with "
                               "`servy-cli export --config=json`") from None
    if not isinstance(raw, dict):
        raise ServyConfigError(f"{path}: expected a JSON object of Servy fields")
    return {k: _json_text(v) for k, v in raw.items() if v is not None}


def _json_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def encode_environment(env: dict[str, str]) -> str:
    """`KEY=value;KEY2=value2` that Servy's parser reads back exactly, keeping Windows paths
    readable: a backslash is doubled only where Servy would take it for an escape."""
    records = []
    for key, value in env.items():
        if not key or any(c in key for c in "=;\r\n\0"):
            raise ValueError(f"invalid environment variable name {key!r}")
        if any(c in value for c in "\r\n\0"):
            raise ValueError(f"{key}: line breaks are not allowed in a Servy environment value")
        records.append(f"{key}={_escape_value(value)}")
    return ";".join(records)


def _escape_value(value: str) -> str:
    out = []
    for i, ch in enumerate(value):
        nxt = value[i + 1] if i + 1 < len(value) else ";"  # a record separator follows the end
        if ch == "\\":
            out.append("\\\\" if nxt in _ESCAPED_BY_BACKSLASH else "\\")
        elif ch in ';"':
            out.append("\\" + ch)
        elif ch == "%":
            out.append("%%")
        else:
            out.append(ch)
    text = "".join(out)
    # Servy trims each value; protect significant outer spaces with quotes (which it strips).
    return f'"{text}"' if text != text.strip() else text


def parse_environment(text: str) -> dict[str, str]:
    """Servy's EnvironmentVariables string as the service process receives it (before %VAR%
    expansion; `%%` collapsed to `%`), following EnvironmentVariableParser."""
    env: dict[str, str] = {}
    for position, record in enumerate(_split_unescaped(text, ";\r\n"), start=1):
        if not record.strip():
            continue
        eq = _index_unescaped(record, "=")
        if eq < 0:
            raise ValueError(f"record {position} has no unescaped '='; write KEY=value")
        key = _unescape(record[:eq].strip())
        if not key:
            raise ValueError(f"record {position} has an empty name")
        raw = record[eq + 1:].strip()
        if len(raw) >= 2 and raw[0] == raw[-1] == '"' and not _escaped_at(raw, len(raw) - 1):
            raw = raw[1:-1]
        env[key] = _unescape(raw).replace("%%", "%")
    return env


def _escaped_at(text: str, index: int) -> bool:
    count = 0
    j = index - 1
    while j >= 0 and text[j] == "\\":
        count += 1
        j -= 1
    return count % 2 == 1


def _split_unescaped(text: str, delimiters: str) -> list[str]:
    parts, current = [], []
    for i, ch in enumerate(text):
        if ch in delimiters and not _escaped_at(text, i):
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def _index_unescaped(text: str, ch: str) -> int:
    return next((i for i, c in enumerate(text) if c == ch and not _escaped_at(text, i)), -1)


def _unescape(text: str) -> str:
    out, escape = [], False
    for ch in text:
        if escape:
            out.append(ch if ch in _ESCAPED_BY_BACKSLASH else "\\" + ch)
            escape = False
        elif ch == "\\":
            escape = True
        else:
            out.append(ch)
    if escape:
        out.append("\\")
    return "".join(out)


def service_xml(fields: dict[str, object]) -> bytes:
    """Serialize fields (in SERVY_FIELDS order) the way Servy's export does."""
    unknown = set(fields) - set(SERVY_FIELDS)
    if unknown:
        raise ValueError(f"not Servy fields: {', '.join(sorted(unknown))}")
    root = ET.Element(ROOT_ELEMENT)
    for name in SERVY_FIELDS:
        if name in fields and fields[name] is not None:
            value = fields[name]
            ET.SubElement(root, name).text = (
                ("true" if value else "false") if isinstance(value, bool) else str(value))
    ET.indent(root, space="  ")
    return (b'<?xml version="1.0" encoding="utf-8"?>\n'
            + ET.tostring(root, encoding="utf-8", xml_declaration=False) + b"\n")


# The guide's §6 tables, mapped onto Servy's fields. Recovery: "restart the service" on the
# first and second failure, nothing after (MaxRestartAttempts=2), checked every 30 s. Servy has
# no "reset the failure count after 1 day": it forgets failures once the service has run
# healthy for its adaptive stability window (here 60 s), see the README.
HEARTBEAT_INTERVAL_S = 30
MAX_FAILED_CHECKS = 1
MAX_RESTART_ATTEMPTS = 2
LOG_FILES_KEPT = 14
STOP_TIMEOUT_S = 30


def render_services(layout: Layout) -> dict[str, bytes]:
    """One Servy service file per service of `units.units` (`<ServiceName>.xml`)."""
    try:
        env = encode_environment(layout.service_environment)
    except ValueError as exc:
        raise RenderError(f"cannot encode the services' environment: {exc}") from None
    files = {}
    for unit in units(layout, workspace=str(layout.workspace),
                      quote=lambda path: f'"{path}"', service_manager="servy"):
        fields = {
            "Name": unit.name,
            "DisplayName": unit.display_name,
            "Description": f"{unit.description} Rendered by dagpg render.",
            "ExecutablePath": layout.script(unit.program),
            "StartupDirectory": layout.root,
            "Parameters": " ".join(unit.args),
            # The keeper starts after the others at boot (delayed automatic start; it must not
            # depend on them, see units.py); setup_dagster.ps1 starts it last.
            "StartupType": STARTUP_DELAYED if unit.start_delayed else STARTUP_AUTOMATIC,
            "StdoutPath": layout.log_dir / f"{unit.log_stem}_stdout.log",
            "StderrPath": layout.log_dir / f"{unit.log_stem}_stderr.log",
            "StopTimeout": STOP_TIMEOUT_S,
            "EnableConsoleUI": False,
            "EnableSizeRotation": False,
            "EnableDateRotation": True,
            "DateRotationType": DATE_ROTATION_DAILY,
            "UseLocalTimeForRotation": True,
            "MaxRotations": LOG_FILES_KEPT,
            # Debug logs would record the environment (the password) in Servy's own log file.
            "EnableDebugLogs": False,
            "EnableHealthMonitoring": True,
            "HeartbeatInterval": HEARTBEAT_INTERVAL_S,
            "MaxFailedChecks": MAX_FAILED_CHECKS,
            "RecoveryAction": RECOVERY_RESTART_SERVICE,
            "MaxRestartAttempts": MAX_RESTART_ATTEMPTS,
            "EnvironmentVariables": env,
            # None: see units.py (a Servy restart stops dependent services and starts only
            # the one restarted).
            "ServiceDependencies": ";".join(unit.depends_on) or None,
        }
        files[f"{unit.name}.xml"] = service_xml(fields)
    return files

