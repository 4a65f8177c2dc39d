"""A second process comparing a share of the runs' events through Dagster's APIs.

Deserializing every event twice (once per instance) is most of the verification's time and
holds the GIL, so on a machine with a spare core half the runs go to this child
(`python -m dagpg.migrate.verify_worker`, job as JSON on stdin, result as JSON on stdout).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from dagpg.migrate.errors import MigrateError
from dagpg.migrate.pump import EventJob
from dagpg.migrate.report import Verification


class EventsWorker:
    """The child, started with its share of runs; `result()` waits for its Verification."""

    def __init__(self, job: EventJob, target_home: Path, run_ids: list[str]):
        payload = json.loads(job.to_json())
        payload.update(target_home=str(target_home), run_ids=run_ids)
        self._process = subprocess.Popen([sys.executable, "-m", "dagpg.migrate.verify_worker"],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._process.stdin.write(json.dumps(payload).encode("utf-8"))
        self._process.stdin.close()

    def result(self) -> dict:
        output = self._process.stdout.read()
        code = self._process.wait()
        try:
            data = json.loads(output)
        except ValueError:
            data = None
        if code != 0 or not isinstance(data, dict):
            raise MigrateError(f"the verification process failed (exit code {code}): "
                               f"{(data or {}).get('error', 'no result')}; run the command again")
        return data

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait(timeout=30)


def merge(into: Verification, data: dict) -> None:
    for check, count in data["compared"].items():
        into.count(check, count)
    for difference in data["differences"]:
        into.differ(difference["check"], difference["key"], difference["detail"])
    into.difference_count += data["difference_count"] - len(data["differences"])


def main() -> int:
    from dagpg.instance import resolve_instance
    from dagpg.migrate.dagster_views import source_instance, target_instance
    from dagpg.migrate.events import Dropped
    from dagpg.migrate.idmap import EventPlan
    from dagpg.migrate.source import SourceFiles
    from dagpg.migrate.verify import Verifier

    try:
        raw = sys.stdin.read()
        job, data = EventJob.from_json(raw), json.loads(raw)
        files = SourceFiles(job.layout, job.scratch, dict(job.copies))
        plan = EventPlan(job.plan_path, readonly=True)
        with source_instance(files, job.scratch) as src, \
                target_instance(resolve_instance(data["target_home"])) as tgt:
            verifier = Verifier(src, tgt, plan.floor, {}, Dropped())
            for run_id in data["run_ids"]:
                verifier.run_events(run_id)
        print(json.dumps(verifier.result.as_dict()))
        return 0
    except Exception as exc:  # noqa: BLE001  (reported by the parent as one line)
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return 1


if __name__ == "__main__":
    sys.exit(main())
