"""`dagpg verify`: prove the webserver and the daemon share one healthy instance.

`verify(settings, ...)` returns a Report of checks (name, status ok/warn/fail/skip, detail).
"""

from dagpg.verify.checks import FAIL, OK, SKIP, WARN, CheckResult
from dagpg.verify.report import Report
from dagpg.verify.runner import default_webserver_url, verify

__all__ = ["FAIL", "OK", "SKIP", "WARN", "CheckResult", "Report", "default_webserver_url",
           "verify"]
