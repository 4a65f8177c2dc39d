"""supervisord: `supervisorctl [-c FILE] restart NAME` (and `status NAME`).

supervisorctl 4.x exit codes, measured against supervisor 4.3.0: `status` 0 running, 3 not
running, 4 no such process (or no socket: told apart by the message); `restart` 0, or 1 with
"NAME: ERROR (...)". A server with HTTP authentication refuses with "Server requires
authentication" (401). Programs should set stopasgroup/killasgroup so that a restart also ends
the daemon's code server and run workers, as a Servy restart ends the process tree.
"""

from __future__ import annotations

from dagpg.services.base import (
    DENIED,
    MISSING,
    RUNNING,
    STARTING,
    STOPPED,
    UNKNOWN,
    ServiceManager,
    ServiceState,
    _one_line,
)

_STATES = {"RUNNING": RUNNING, "STARTING": STARTING, "BACKOFF": STARTING, "STOPPED": STOPPED,
           "STOPPING": STOPPED, "EXITED": STOPPED, "FATAL": STOPPED, "UNKNOWN": UNKNOWN}


class Supervisord(ServiceManager):
    kind = "supervisord"
    program_setting = "supervisorctl"
    permission_hint = ("give the keeper supervisorctl's credentials ([supervisorctl] username "
                       "and password in the file dagpg.watch.supervisor_config names)")
    unreachable_hint = ("start supervisord, or set dagpg.watch.supervisor_config to the config "
                        "file of the supervisord that runs the services")

    def __init__(self, program: str = "supervisorctl", config: str = ""):
        super().__init__(program)
        self.config = config

    def _args(self, *args: str) -> list[str]:
        return (["-c", self.config] if self.config else []) + list(args)

    def restart_argv(self, name: str) -> list[str]:
        return [self.program, *self._args("restart", name)]

    def restart_succeeded(self, output: str) -> bool:
        return "ERROR" not in output

    def status(self, name: str) -> ServiceState:
        done = self.run(self._args("status", name))
        text = _one_line(done.output)
        if "no such process" in text:
            return ServiceState(name, MISSING, text)
        if "authentication" in text or "Unauthorized" in text or "Permission denied" in text:
            return ServiceState(name, DENIED, text)
        words = done.output.split()
        if len(words) >= 2 and words[0] == name and words[1] in _STATES:
            return ServiceState(name, _STATES[words[1]], text)
        return ServiceState(name, UNKNOWN, text or f"exit code {done.returncode}")
