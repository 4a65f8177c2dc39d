"""A second process comparing a share of the runs' events through Dagster's APIs.

Deserializing every event twice (once per instance) is most of the verification's time and
holds the GIL, so on a machine with a spare core half the runs go to this child
(`python -m dagpg.migrate.verify_worker`, a VerifyJob as JSON on stdin, the result as JSON on
stdout). It dies with its parent; an error that stops it reaches the parent with its exit code,
as pump.py's do.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from dagpg import children
from dagpg.migrate.errors import VerifyProcessError, relay
from dagpg.migrate.report import Verification
from dagpg.migrate.source import SourceFiles

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VerifyJob:
    """What the child compares: these runs, of these files, against the instance in
    `target_home`, with the plan's id mapping."""

    files: SourceFiles
    plan_path: Path
    target_home: Path
    run_ids: list[str]

    def to_json(self) -> str:
        return json.dumps({"files": self.files.as_json(), "plan_path": str(self.plan_path),
                           "target_home": str(self.target_home), "run_ids": self.run_ids})

    @classmethod
    def from_json(cls, text: str) -> VerifyJob:
        data = json.loads(text)
        return cls(files=SourceFiles.from_json(data["files"]),
                   plan_path=Path(data["plan_path"]), target_home=Path(data["target_home"]),
                   run_ids=data["run_ids"])


class EventsWorker(children.JsonChild):
    """The child, started with its job; `result()` waits for its Verification (as a dict)."""

    def __init__(self, job: VerifyJob):
        super().__init__("dagpg.migrate.verify_worker", job.to_json())

    def result(self) -> dict:
        code, data = self.output()
        if isinstance(data, dict) and "error" in data:
            error = VerifyProcessError.from_relay(data["error"])
            if error.trace:
                log.error("verification process failed:\n%s", error.trace)
            raise error
        if code != 0 or not isinstance(data, dict):
            raise VerifyProcessError(f"the verification process ended early (exit code {code});"
                                     " run the command again")
        return data


def merge(into: Verification, data: dict) -> None:
    for check, count in data["compared"].items():
        into.count(check, count)
    for difference in data["differences"]:
        into.differ(difference["check"], difference["key"], difference["detail"])
    into.difference_count += data["difference_count"] - len(data["differences"])


def main() -> int:
    from dagpg.instance import resolve_instance
    from dagpg.migrate.compare_events import EventComparer
    from dagpg.migrate.dagster_views import source_instance, target_instance
    from dagpg.migrate.idmap import EventPlan

    children.watch_parent()
    try:
        job = VerifyJob.from_json(sys.stdin.read())
        target = resolve_instance(job.target_home)
        plan = EventPlan(job.plan_path, readonly=True)
        result = Verification()
        with source_instance(job.files, job.files.scratch) as src, \
                target_instance(target) as tgt:
            comparer = EventComparer(src, tgt, plan.ids(), result)
            for run_id in job.run_ids:
                comparer.run_events(run_id)
        output = result.as_dict()
        code = 0
    except BaseException as exc:  # noqa: BLE001  (handed to the parent, raised there)
        output, code = {"error": relay(exc)}, 1
    try:
        sys.stdout.write(json.dumps(output))
        sys.stdout.flush()
    except (BrokenPipeError, ConnectionResetError):
        return 1  # the parent is gone
    return code


if __name__ == "__main__":
    sys.exit(main())
