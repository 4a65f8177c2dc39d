"""Service managers (Servy, systemd, supervisord) behind one interface: check, status, restart.

`manager_for(settings)` builds the one `dagpg.watch.service_manager` names.
"""

from __future__ import annotations

from dagpg.services.base import (
    RUNNING,
    RestartResult,
    ServiceManager,
    ServiceManagerError,
    ServiceState,
)
from dagpg.settings import SERVICE_MANAGERS, KitSettings


def manager_for(settings: KitSettings) -> ServiceManager:
    watch = settings.watch
    if watch.service_manager == "servy":
        from dagpg.services.servy import Servy

        return Servy(watch.servy_cli)
    if watch.service_manager == "systemd":
        from dagpg.services.systemd import Systemd

        return Systemd(watch.systemctl)
    if watch.service_manager == "supervisord":
        from dagpg.services.supervisord import Supervisord

        config = str(settings.resolve(watch.supervisor_config)) if watch.supervisor_config else ""
        return Supervisord(watch.supervisorctl, config)
    raise ServiceManagerError(
        f"dagpg.watch.service_manager: unknown service manager {watch.service_manager!r}; "
        f"choose one of {', '.join(SERVICE_MANAGERS)}")


__all__ = ["RUNNING", "RestartResult", "ServiceManager", "ServiceManagerError", "ServiceState",
           "manager_for"]
