"""The nightly step as a Windows Task Scheduler task (`schtasks /Create /TN NAME /XML FILE /F`).

The task is the fallback for a night the daemon is down: Dagster's own `instance_backup_nightly`
runs the nightly step (it shows in the UI), and this task runs FALLBACK_DELAY_H hours later with
`dagpg nightly --backup-if-older-than`: the same library call (dagpg.nightly), whose backup does
nothing when that night's backup exists; then the backups' retention and the history prune.
Both running at once would collide on the backup lock. One Exec action runs it with the
services' DAGSTER_HOME and PROJECT_ENV, appending its output to the log folder. The task runs
as LocalSystem, whatever user is logged on. The PostgreSQL password is not in the task: it comes
from the machine-wide DAGSTER_PG_PASSWORD that setup_dagster.ps1 sets (the README explains the
trade-off). Times are the server's local time.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from dagpg.render.errors import RenderError
from dagpg.render.layout import Layout

TASK_NAME = "DagsterNightlyBackup"
NAMESPACE = "http://schemas.microsoft.com/windows/2004/02/mit/task"
LOCAL_SYSTEM_SID = "S-1-5-18"
_DAILY = re.compile(r"^(\d{1,2}) (\d{1,2}) \* \* \*$")
FALLBACK_DELAY_H = 2  # after the Dagster schedule's time
SKIP_IF_NEWER_THAN_H = 12  # a backup younger than this means the Dagster schedule ran


def daily_time(cron: str) -> tuple[int, int]:
    """(hour, minute) of a daily cron `M H * * *`; RenderError for anything else."""
    match = _DAILY.match(cron.strip())
    if not match or int(match.group(1)) > 59 or int(match.group(2)) > 23:
        raise RenderError(f"dagpg.backup.schedule.cron: {cron!r} is not a daily schedule "
                          "'M H * * *'; only those can be rendered as a Task Scheduler trigger")
    return int(match.group(2)), int(match.group(1))


def backup_command(layout: Layout) -> str:
    """cmd.exe's arguments: the environment, `dagpg nightly`, output appended to the log."""
    dagpg = f'"{layout.script("dagpg")}"'
    env = " && ".join(f'set "{k}={v}"' for k, v in layout.service_environment.items())
    log = layout.log_dir / "dagpg_backup.log"
    nightly = f"{dagpg} nightly --backup-if-older-than {SKIP_IF_NEWER_THAN_H} --silent"
    return f'/d /s /c "{env} && ({nightly}) >> "{log}" 2>&1"'



def render_task(layout: Layout) -> bytes:
    schedule = layout.settings.backup.schedule
    hour, minute = daily_time(schedule.cron)
    hour = (hour + FALLBACK_DELAY_H) % 24
    ET.register_namespace("", NAMESPACE)

    def el(parent, tag, text=None, **attrib):
        node = ET.SubElement(parent, f"{{{NAMESPACE}}}{tag}", attrib)
        if text is not None:
            node.text = text
        return node

    task = ET.Element(f"{{{NAMESPACE}}}Task", {"version": "1.2"})
    info = el(task, "RegistrationInfo")
    el(info, "Description",
       f"Fallback nightly backup of the Dagster instance in {layout.dagster_home}: at "
       f"{hour:02d}:{minute:02d} server time, {FALLBACK_DELAY_H} h after Dagster's "
       f"instance_backup_nightly ({schedule.cron} {schedule.timezone}), dagpg nightly: a "
       f"backup unless one younger than {SKIP_IF_NEWER_THAN_H} h exists, the backups' "
       "retention, then the history prune (dagpg.retention). "
       "Rendered by dagpg render task.")
    el(info, "URI", f"\\{TASK_NAME}")
    trigger = el(el(task, "Triggers"), "CalendarTrigger")
    el(trigger, "StartBoundary", f"2026-01-01T{hour:02d}:{minute:02d}:00")
    el(trigger, "Enabled", "true")
    el(el(trigger, "ScheduleByDay"), "DaysInterval", "1")
    principal = el(el(task, "Principals"), "Principal", id="Author")
    el(principal, "UserId", LOCAL_SYSTEM_SID)
    el(principal, "RunLevel", "HighestAvailable")
    settings = el(task, "Settings")
    for tag, text in (("MultipleInstancesPolicy", "IgnoreNew"),
                      ("DisallowStartIfOnBatteries", "false"),
                      ("StopIfGoingOnBatteries", "false"),
                      ("AllowHardTerminate", "true"),
                      ("StartWhenAvailable", "true"),  # a missed night runs at next boot
                      ("RunOnlyIfNetworkAvailable", "false")):
        el(settings, tag, text)
    idle = el(settings, "IdleSettings")
    el(idle, "StopOnIdleEnd", "false")
    el(idle, "RestartOnIdle", "false")
    for tag, text in (("AllowStartOnDemand", "true"), ("Enabled", "true"),
                      ("Hidden", "false"), ("RunOnlyIfIdle", "false"), ("WakeToRun", "false"),
                      ("ExecutionTimeLimit", "PT4H"), ("Priority", "7")):
        el(settings, tag, text)
    restart = el(settings, "RestartOnFailure")
    el(restart, "Interval", "PT30M")
    el(restart, "Count", "2")
    exec_ = el(el(task, "Actions", Context="Author"), "Exec")
    el(exec_, "Command", r"%SystemRoot%\System32\cmd.exe")
    el(exec_, "Arguments", backup_command(layout))
    el(exec_, "WorkingDirectory", str(layout.root))
    ET.indent(task, space="  ")
    body = ET.tostring(task, encoding="unicode")
    # schtasks /XML reads UTF-16 (what Task Scheduler itself exports).
    return ('<?xml version="1.0" encoding="UTF-16"?>\n' + body + "\n").encode("utf-16")
