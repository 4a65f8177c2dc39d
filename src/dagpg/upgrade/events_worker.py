"""A second process reading a share of the runs' events through Dagster's API.

Reading every event means deserializing it, which holds the GIL and is most of the checks'
time; on a machine with a spare core half the runs (by events) go to this child
(`python -m dagpg.upgrade.events_worker`, job as JSON on stdin, result as JSON on stdout), as
the migration's verifier does. It dies with its parent (dagpg.children).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from dagpg import children
from dagpg.upgrade.errors import UpgradeError

PAGE = 1000


def count_events(dagster, run_ids: list[str]) -> dict[str, list[int]]:
    """{run_id: [number of events, last storage id]} through `dagster.get_records_for_run`."""
    found = {}
    for run_id in run_ids:
        count, last, cursor = 0, 0, None
        while True:
            conn = dagster.get_records_for_run(run_id, cursor=cursor, limit=PAGE)
            count += len(conn.records)
            if conn.records:
                last = max(last, conn.records[-1].storage_id)
            if not conn.has_more:
                break
            cursor = conn.cursor
        if count:
            found[run_id] = [count, last]
    return found


class EventsWorker(children.JsonChild):
    """The child, started with its share of runs; `result()` waits for its counts."""

    def __init__(self, home: Path, run_ids: list[str]):
        super().__init__("dagpg.upgrade.events_worker",
                         json.dumps({"home": str(home), "run_ids": run_ids}))

    def result(self) -> dict[str, list[int]]:
        code, data = self.output()
        if code != 0 or not isinstance(data, dict) or "events" not in data:
            error = data.get("error", "no result") if isinstance(data, dict) else "no result"
            raise UpgradeError(f"the process reading events failed (exit code {code}): "
                               f"{error}; run the command again")
        return data["events"]


def main() -> int:
    children.watch_parent()  # besides the kernel's PR_SET_PDEATHSIG set by children.popen
    from dagpg.instance import resolve_instance
    from dagpg.migrate.dagster_views import target_instance

    try:
        job = json.loads(sys.stdin.read())
        with target_instance(resolve_instance(job["home"])) as dagster:
            print(json.dumps({"events": count_events(dagster, job["run_ids"])}))
        return 0
    except Exception as exc:  # noqa: BLE001  (reported by the parent as one line)
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return 1


if __name__ == "__main__":
    sys.exit(main())
