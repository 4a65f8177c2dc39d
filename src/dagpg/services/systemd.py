"""systemd: `systemctl restart UNIT` (and `systemctl show` for its state).

Units are named after `dagpg.services` (`DagsterDaemon` is DagsterDaemon.service), as
`dagpg render systemd` writes them. Restarting a system unit needs root (or a polkit rule):
the rendered DagsterKeeper.service runs as root; anyone else is refused at startup.
"""

from __future__ import annotations

import os

from dagpg.services.base import (
    DENIED,
    MISSING,
    RUNNING,
    STARTING,
    STOPPED,
    UNKNOWN,
    ServiceManager,
    ServiceManagerError,
    ServiceState,
    _one_line,
)

_ACTIVE = {"active": RUNNING, "reloading": RUNNING, "activating": STARTING,
           "inactive": STOPPED, "failed": STOPPED, "deactivating": STOPPED}


class Systemd(ServiceManager):
    kind = "systemd"
    program_setting = "systemctl"
    permission_hint = "run the keeper as root, as the rendered DagsterKeeper.service does"

    def __init__(self, program: str = "systemctl"):
        super().__init__(program)

    def restart_argv(self, name: str) -> list[str]:
        return [self.program, "restart", unit(name)]

    def status(self, name: str) -> ServiceState:
        done = self.run(["show", "-p", "LoadState", "-p", "ActiveState", "-p", "SubState",
                         unit(name)])
        props = dict(line.split("=", 1) for line in done.output.splitlines() if "=" in line)
        if done.returncode != 0 or "LoadState" not in props:
            text = _one_line(done.output) or f"exit code {done.returncode}"
            return ServiceState(name, DENIED if "ermission" in text else UNKNOWN, text)
        text = (f"LoadState={props['LoadState']} ActiveState={props.get('ActiveState')} "
                f"SubState={props.get('SubState')}")
        if props["LoadState"] == "not-found":
            return ServiceState(name, MISSING, text)
        return ServiceState(name, _ACTIVE.get(props.get("ActiveState", ""), UNKNOWN), text)

    def check_permission(self) -> None:
        if hasattr(os, "geteuid") and os.geteuid() != 0:
            raise ServiceManagerError(
                f"no permission: `systemctl restart` of system units needs root, and this "
                f"keeper runs as uid {os.geteuid()}; {self.permission_hint}")


def unit(name: str) -> str:
    return name if "." in name else f"{name}.service"
