"""systemd units for a Linux server: the same services as the Servy files (`units.py`), the
same DAGSTER_HOME and PROJECT_ENV, paths from `dagpg.systemd` in config.yml.

    sudo install -m 0600 /dev/null /etc/dagpg/dagster.env    # then: DAGSTER_PG_PASSWORD=...
    sudo cp OUT/systemd/*.service /etc/systemd/system/ && sudo systemctl daemon-reload
    sudo systemctl enable --now DagsterWebserver DagsterDaemon DagsterKeeper

The password is read from EnvironmentFile= (root-only), never written into a unit. Stopping or
restarting a unit ends its whole control group (KillMode=control-group, the default): the
daemon's code server and run workers go with it, as they do with a Servy restart. The keeper
runs as root (`systemctl restart` of system units needs it) and is ordered after the other two
(After=, Wants=) without Requires=, which would restart it with the daemon it restarts.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from dagpg.render.errors import RenderError
from dagpg.render.layout import Layout
from dagpg.render.units import units

MARKER = "Rendered by `dagpg render systemd`"
STOP_TIMEOUT_S = 30
_SAFE = re.compile(r"^[A-Za-z0-9_./@:+-]+$")


def linux_paths(layout: Layout) -> dict[str, PurePosixPath]:
    cfg = layout.settings.systemd
    where = f"{layout.settings.path}: " if layout.settings.path else ""
    root = PurePosixPath(cfg.project_root or layout.settings.project_dir.as_posix())
    if not root.is_absolute():
        raise RenderError(f"{where}dagpg.systemd.project_root: {cfg.project_root!r} is not an "
                          "absolute path; write e.g. /opt/arcpy-orchestration, or leave it empty "
                          "for this project's folder")
    out = {"root": root}
    for key in ("venv", "dagster_home", "environment_file"):
        value = getattr(cfg, key)
        p = PurePosixPath(value)
        p = p if p.is_absolute() else root / p
        if not _SAFE.match(str(p)):
            raise RenderError(f"{where}dagpg.systemd.{key}: {value!r} must be a path of letters, "
                              "digits and . _ - / (no spaces or quotes)")
        out[key] = p
    if cfg.user and not re.fullmatch(r"[a-z_][a-z0-9_-]*", cfg.user):
        raise RenderError(f"{where}dagpg.systemd.user: {cfg.user!r} is not a user name")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", cfg.project_env):
        raise RenderError(f"{where}dagpg.systemd.project_env: {cfg.project_env!r} must be a "
                          "plain name such as prod")
    return out


def render_units(layout: Layout) -> dict[str, bytes]:
    """`<Name>.service` for every service, keyed by file name."""
    paths = linux_paths(layout)
    cfg = layout.settings.systemd
    workspace = paths["dagster_home"] / "workspace.yaml"
    files = {}
    for unit in units(layout, workspace=str(workspace), quote=str,
                      service_manager="systemd"):
        after = " ".join(["network-online.target", "postgresql.service",
                          *(f"{n}.service" for n in unit.starts_after)])
        wants = " ".join(["network-online.target", *(f"{n}.service" for n in unit.starts_after)])
        user = "" if unit.runs_as_admin or not cfg.user else f"User={cfg.user}\n"
        exec_start = " ".join([str(paths["venv"] / "bin" / unit.program), *unit.args])
        text = f"""# {MARKER} from config/config.yml (dagpg.systemd, dagpg.services,
# dagpg.webserver). Install: see the README, "Deploying on Linux (systemd)".
[Unit]
Description={unit.display_name}: {unit.description}
After={after}
Wants={wants}

[Service]
Type=simple
{user}WorkingDirectory={paths["root"]}
Environment=DAGSTER_HOME={paths["dagster_home"]}
Environment=PROJECT_ENV={cfg.project_env}
# The PostgreSQL password comes from this root-only file (mode 0600), never from a unit.
EnvironmentFile={paths["environment_file"]}
ExecStart={exec_start}
Restart=always
RestartSec=5
TimeoutStopSec={STOP_TIMEOUT_S}
KillMode=control-group

[Install]
WantedBy=multi-user.target
"""
        files[f"{unit.name}.service"] = text.encode("utf-8")
    return files
