"""Progress of long work: one callback type for the whole kit.

A library function that takes long accepts `progress: ProgressFn | None` and calls it with text.
Text, so that `print`, a logger and Dagster's `context.log.info` can be passed as they are. Work
that can be counted (the migration's phases) passes a `Progress`: still a str (its message),
that also carries `phase`, `done`, `total` and `unit`, so a terminal can draw a bar::

    def render(message: str) -> None:
        if isinstance(message, Progress) and message.total:
            bar.update(message.done)
        else:
            print(message)
"""

from __future__ import annotations

from collections.abc import Callable

ProgressFn = Callable[[str], None]


class Progress(str):
    """A step of a phase: `done` of `total` `unit` (total 0 when unknown). Its text reads
    `copying: 120/500 rows`."""

    phase: str
    done: int
    total: int
    unit: str

    def __new__(cls, phase: str, done: int = 0, total: int = 0, unit: str = "") -> Progress:
        of = f"/{total}" if total else ""
        self = super().__new__(cls, f"{phase}: {done}{of} {unit}".rstrip())
        self.phase, self.done, self.total, self.unit = phase, done, total, unit
        return self

    def __repr__(self) -> str:
        return f"Progress({self.phase!r}, {self.done}, {self.total}, {self.unit!r})"

    def __reduce__(self):  # pickling rebuilds it from its fields, not from its text
        return (Progress, (self.phase, self.done, self.total, self.unit))


def reporter(progress: ProgressFn | None) -> ProgressFn:
    """`progress`, or a callback that drops every message (for `say = reporter(progress)`)."""
    return progress or _drop


def _drop(_message: str) -> None:
    pass
