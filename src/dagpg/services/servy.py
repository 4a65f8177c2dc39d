"""Servy (Windows): `servy-cli restart --name=NAME --quiet` (and `status`).

Checked against Servy's source (github.com/aelassas/servy, src/Servy.CLI, as of Aug 2026) and
its wiki page "Servy CLI":
- `restart` (Commands/RestartServiceCommand.cs, BaseCommand.ExecuteServiceOperationAsync) first
  requires an elevated process (SecurityHelper.EnsureAdministrator), then that the service is
  installed ("The specified service was not found.") and not disabled, then stops the service
  and starts it (Servy.Core ServiceManager.RestartServiceAsync: ServiceController.Stop(), which
  also stops services that depend on it, then Start()). It prints the result on stdout
  ("Service 'NAME' restarted successfully.") or stderr and exits 0 on success, 1 on failure
  (Program.cs CliExitCode; Models/CommandResult.cs).
- `status` (Commands/ServiceStatusCommand.cs) needs no elevation and prints
  "Service status for 'NAME': STATUS" with STATUS one of NotInstalled, Stopped, StartPending,
  StopPending, Running, ContinuePending, PausePending, Paused; exit code 0.
- Long options take `=` (`--name=NAME`); only one-letter ones do not. `--quiet` (GlobalOptionsBase)
  suppresses the spinner in a non-interactive session such as a service.
Because a restart stops dependent services, the keeper's own service must not depend on the
daemon or the webserver (dagpg render servy gives it no ServiceDependencies).
"""

from __future__ import annotations

import re
import sys

from dagpg.services.base import (
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

_STATUS = re.compile(r"Service status for '(?P<name>[^']*)': (?P<status>\w+)")
_STATES = {"Running": RUNNING, "StartPending": STARTING, "ContinuePending": STARTING,
           "Stopped": STOPPED, "StopPending": STOPPED, "Paused": STOPPED,
           "PausePending": STOPPED, "NotInstalled": MISSING}


class Servy(ServiceManager):
    kind = "servy"
    program_setting = "servy_cli"
    permission_hint = ("run the keeper elevated (its Servy service runs as LocalSystem) or as "
                       "an administrator")

    def __init__(self, program: str = "servy-cli"):
        super().__init__(program)

    def restart_argv(self, name: str) -> list[str]:
        return [self.program, "restart", f"--name={name}", "--quiet"]

    def status(self, name: str) -> ServiceState:
        done = self.run(["status", f"--name={name}", "--quiet"])
        text = _one_line(done.output)
        match = _STATUS.search(done.output)
        if done.returncode != 0 or not match:
            return ServiceState(name, UNKNOWN, text or f"exit code {done.returncode}")
        return ServiceState(name, _STATES.get(match.group("status"), UNKNOWN), text)

    def check_permission(self) -> None:
        if sys.platform != "win32":
            raise ServiceManagerError("Servy manages Windows services; on Linux set "
                                      "dagpg.watch.service_manager to systemd or supervisord")
        import ctypes

        if not ctypes.windll.shell32.IsUserAnAdmin():  # what servy-cli itself requires
            raise ServiceManagerError(
                f"no permission: servy-cli restart needs an elevated process; "
                f"{self.permission_hint}")
