"""Render event rows in a child process while this one sends them to PostgreSQL.

Rendering COPY text is Python work (about 5 µs a row, measured); the server's COPY into
event_logs (heap and six indexes) is the other half. In one process they take turns, and a
producer thread does not help since the renderer holds the GIL. So a child
(`python -m dagpg.migrate.pump`, a plain subprocess: no multiprocessing re-import of the
caller's __main__) renders each unit onto its stdout; this process forwards the bytes to
psycopg2. The child also closes each unit (rows, resume marker, warnings), so the parent
commits exactly what it sent. It dies with its parent (dagpg.children).

Messages on the child's stdout: one byte of kind, four of length (big-endian), the body.
"""

from __future__ import annotations

import json
import logging
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from dagpg import children
from dagpg.migrate.errors import CopyProcessError, relay
from dagpg.migrate.source import SourceFiles

log = logging.getLogger(__name__)

_DATA, _END, _ERROR, _DONE = b"D", b"E", b"X", b"Q"
_HEADER = struct.Struct(">cI")


@dataclass(frozen=True)
class EventJob:
    """All the child needs, sent to it as JSON on its stdin."""

    files: SourceFiles
    plan_path: Path
    shard_ids: list[str]
    marker: dict | None
    batch_rows: int

    def to_json(self) -> str:
        return json.dumps({"files": self.files.as_json(), "plan_path": str(self.plan_path),
                           "shard_ids": self.shard_ids, "marker": self.marker,
                           "batch_rows": self.batch_rows})

    @classmethod
    def from_json(cls, text: str) -> EventJob:
        data = json.loads(text)
        return cls(files=SourceFiles.from_json(data["files"]),
                   plan_path=Path(data["plan_path"]), shard_ids=data["shard_ids"],
                   marker=data["marker"], batch_rows=data["batch_rows"])


@dataclass(frozen=True)
class UnitEnd:
    rows: int
    detail: dict = field(default_factory=dict)


class Pump:
    """`units()` yields one read()-able stream per unit; its `.end` is set once drained."""

    def __init__(self, job: EventJob):
        self._process = children.popen([sys.executable, "-m", "dagpg.migrate.pump"],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        children.send(self._process, job.to_json().encode("utf-8"))

    def units(self) -> Iterator[_UnitStream]:
        while True:
            stream = _UnitStream(self._receive)
            if stream.at_done():
                return
            yield stream

    def _receive(self) -> tuple[bytes, bytes]:
        out = self._process.stdout
        header = out.read(_HEADER.size)
        if len(header) < _HEADER.size:
            code = self._process.wait()
            raise CopyProcessError(f"the event-rendering process ended early (exit code "
                                   f"{code}); run the command again", 1)
        kind, length = _HEADER.unpack(header)
        body = out.read(length)
        if kind == _ERROR:
            error = CopyProcessError.from_relay(json.loads(body))
            if error.trace:
                log.error("event-rendering process failed:\n%s", error.trace)
            raise error
        return kind, body

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait(timeout=30)
        self._process.stdout.close()


class _UnitStream:
    """One unit's COPY data as a file for psycopg2's copy_expert."""

    def __init__(self, receive):
        self._receive = receive
        self._first: tuple[bytes, bytes] | None = receive()
        self._rest = b""
        self.end: UnitEnd | None = None

    def at_done(self) -> bool:
        return self._first is not None and self._first[0] == _DONE

    def _next(self) -> tuple[bytes, bytes]:
        if self._first is not None:
            item, self._first = self._first, None
            return item
        return self._receive()

    def read(self, size: int = -1) -> bytes:
        parts, length = [self._rest], len(self._rest)
        while self.end is None and (size < 0 or length < size):
            kind, body = self._next()
            if kind == _END:
                self.end = UnitEnd(**json.loads(body))
            elif kind == _DATA:
                parts.append(body)
                length += len(body)
            else:
                raise CopyProcessError("the event-rendering process stopped mid-unit; run "
                                       "the command again", 1)
        data = b"".join(parts)
        if size < 0 or len(data) <= size:
            self._rest = b""
            return data
        self._rest = data[size:]
        return data[:size]

    readline = read


# -- the child ------------------------------------------------------------------------------
def _send(out, kind: bytes, body: bytes) -> None:
    out.write(_HEADER.pack(kind, len(body)))
    out.write(body)


def main() -> int:
    """Render every remaining unit of the job read from stdin onto stdout."""
    from dagpg.migrate.events import EventRows, UnitLog
    from dagpg.migrate.idmap import EventPlan

    children.watch_parent()
    out = sys.stdout.buffer
    try:
        job = EventJob.from_json(sys.stdin.read())
        plan = EventPlan(job.plan_path, readonly=True)
        rows = EventRows(job.files, plan, job.shard_ids, UnitLog(), job.batch_rows, job.marker)
        for chunks, close in rows.units():
            for chunk in chunks:
                _send(out, _DATA, chunk.encode("utf-8"))
            _send(out, _END, json.dumps(close()).encode("utf-8"))
        _send(out, _DONE, b"")
        out.flush()
        return 0
    except (BrokenPipeError, ConnectionResetError):
        return 1  # the parent is gone
    except BaseException as exc:  # noqa: BLE001  (handed to the parent, raised there)
        try:
            _send(out, _ERROR, json.dumps(relay(exc)).encode("utf-8"))
            out.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
        return 1


if __name__ == "__main__":
    sys.exit(main())
