"""`verify()` plus what a freshly set-up server needs: a bounded wait for the daemon's first
heartbeats and for the webservers to listen (services just started), and the ArcPy license check in the
services' Python (`arcpy_license`), run alongside."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from dagpg.errors import ConfigurationError
from dagpg.progress import ProgressFn
from dagpg.settings import KitSettings
from dagpg.verify import arcpy_license
from dagpg.verify.checks import FAIL
from dagpg.verify.report import Report
from dagpg.verify.runner import verify
from dagpg.verify.services import DAEMON, service_homes

HEARTBEATS = "daemon.heartbeats"
DATABASE = "database"
POLL_S = 5.0


def verify_full(
    settings: KitSettings,
    *,
    wait_s: float = 0.0,
    poll_s: float = POLL_S,
    progress: ProgressFn | None = None,
    dagster_home: str | os.PathLike | None = None,
    servy_configs: Sequence[str | os.PathLike] = (),
    **options,
) -> Report:
    """`verify()`; while the daemon's heartbeats fail or a webserver does not answer yet, check
    again every `poll_s` for up to `wait_s` more seconds (nothing else is waited for: a wrong
    password or a webserver answering an error fails at once); where
    the services' Python has arcpy, whether it imports with a license."""
    if not wait_s >= 0:  # also refuses NaN
        raise ConfigurationError(f"wait_s (--wait) must be 0 or more, not {wait_s:g}; give a "
                                 "number of seconds")
    started = time.monotonic()
    daemon = service_homes(settings, servy_configs, dagster_home)[DAEMON]
    kwargs = dict(options, dagster_home=dagster_home, servy_configs=servy_configs)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="verify-arcpy") as pool:
        licensed = pool.submit(arcpy_license.check, settings, daemon)
        report = verify(settings, **kwargs)
        deadline = time.monotonic() + wait_s
        while (detail := _waiting_for(report)) and time.monotonic() < deadline:
            left = deadline - time.monotonic()
            if progress:
                progress(f"waiting for {detail[0]} ({left:.0f} s left): {detail[1]}")
            time.sleep(max(0.0, min(poll_s, left)))
            report = verify(settings, **kwargs)
        extra = licensed.result()
    if extra is not None:
        report.checks.append(extra)
    report.elapsed_s = time.monotonic() - started
    return report


def _waiting_for(report: Report) -> tuple[str, str] | None:
    """What a service just started has not done yet, as (what, the check's detail): the
    daemon's heartbeats while their check fails, or a webserver that does not answer at all.
    Nothing while the database check fails: a wrong password is not cured by waiting."""
    if any(c.name == DATABASE and c.status == FAIL for c in report.checks):
        return None
    for check in report.checks:
        if check.status != FAIL:
            continue
        if check.name == HEARTBEATS:
            return "the daemon's heartbeats", check.detail
        if check.name.endswith(".server_info") and (check.data or {}).get("unreachable"):
            return "the webserver to answer", check.detail
    return None
