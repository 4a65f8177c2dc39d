"""Which events each tier deletes, by Dagster's event type (DagsterEventType values, as stored in
event_logs.dagster_event_type; NULL is a plain log message, e.g. `context.log.info`).

The logs tier deletes only these, and only rows without an asset key, so an event type Dagster
adds later is kept until the runs tier deletes its run. tests/test_prune_units.py checks every
name against the installed Dagster.
"""

from __future__ import annotations

LOG_MESSAGE = None  # dagster_event_type IS NULL

# Bulky: step logs and the plumbing around a step. Kept: run status events, step start, success,
# failure, skip and retry (the run's timeline and why it failed), resource init failures, hook
# errors, every asset and asset check event.
BULKY_TYPES = (
    "ENGINE_EVENT",
    "STEP_WORKER_STARTING",
    "STEP_WORKER_STARTED",
    "RESOURCE_INIT_STARTED",
    "RESOURCE_INIT_SUCCESS",
    "LOGS_CAPTURED",
    "STEP_INPUT",
    "STEP_OUTPUT",
    "LOADED_INPUT",
    "HANDLED_OUTPUT",
    "OBJECT_STORE_OPERATION",
    "ASSET_STORE_OPERATION",
    "STEP_EXPECTATION_RESULT",
    "HOOK_COMPLETED",
    "HOOK_SKIPPED",
    "ALERT_START",
    "ALERT_SUCCESS",
)

# A run's status events: the last rows of a run the runs tier deletes, in the same transaction as
# the run itself, so a run never shows without its status history.
RUN_STATUS_TYPES = (
    "PIPELINE_ENQUEUED",
    "PIPELINE_DEQUEUED",
    "PIPELINE_STARTING",
    "PIPELINE_START",
    "PIPELINE_SUCCESS",
    "PIPELINE_FAILURE",
    "PIPELINE_CANCELING",
    "PIPELINE_CANCELED",
    "RUN_SUSPENDED",
    "RUN_RESUMED",
)

FINISHED_STATUSES = ("SUCCESS", "FAILURE", "CANCELED")  # DagsterRunStatus values

# asset_check_executions.execution_status of a completed execution
# (COMPLETED_ASSET_CHECK_EXECUTION_RECORD_STATUSES)
COMPLETED_CHECK_STATUSES = ("SUCCEEDED", "FAILED")

# BulkActionStatus values of a backfill that is over; any other status counts as in progress.
BACKFILL_DONE_STATUSES = ("COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED",
                          "CANCELED")

# SQL: a bulky event (parameters: %(bulky)s = list(BULKY_TYPES)).
BULKY_SQL = ("asset_key IS NULL AND (dagster_event_type IS NULL "
             "OR dagster_event_type = ANY(%(bulky)s))")


def type_name(stored: str | None) -> str:
    """How an event type is reported: Dagster's name, or `LOG_MESSAGE` for a plain log line."""
    return "LOG_MESSAGE" if stored in (None, "") else stored
