"""Streaming rows into PostgreSQL with COPY ... FROM STDIN (text format), and the conversions
SQLite never enforced: varchar lengths, booleans, bytea, naive-UTC timestamps, NUL characters.

Rows are generated lazily and read by psycopg2 in 1 MiB pieces, so memory stays flat however
long the table is.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

NULL = "\\N"
READ_SIZE = 1 << 20
_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d[ T]\d\d:\d\d(:\d\d(\.\d{1,6})?)?$")


class Rejected(ValueError):
    """A value PostgreSQL would refuse (the row is dropped and reported)."""

    def __init__(self, kind: str, column: str, detail: str):
        super().__init__(f"{column}: {detail}")
        self.kind = kind
        self.column = column


def esc(value: str) -> str:
    """A text value in COPY's text format."""
    if "\\" in value:
        value = value.replace("\\", "\\\\")
    if "\t" in value:
        value = value.replace("\t", "\\t")
    if "\n" in value:
        value = value.replace("\n", "\\n")
    if "\r" in value:
        value = value.replace("\r", "\\r")
    return value


class LineStream:
    """A read()-able file over an iterator of COPY lines (each ending in a newline)."""

    def __init__(self, lines: Iterator[str]):
        self._lines = lines
        self._rest = ""

    def read(self, size: int = -1) -> str:
        size = READ_SIZE if size is None or size < 0 else size
        parts = [self._rest]
        length = len(self._rest)
        for line in self._lines:
            parts.append(line)
            length += len(line)
            if length >= size:
                break
        data = "".join(parts)
        self._rest = data[size:]
        return data[:size]

    readline = read


@dataclass(frozen=True)
class Column:
    name: str
    data_type: str
    max_length: int | None

    def converter(self) -> Callable[[object], str]:
        t = self.data_type
        if t in ("bigint", "integer", "smallint"):
            return _integer(self.name)
        if t == "double precision":
            return _float(self.name)
        if t == "boolean":
            return _boolean(self.name)
        if t.startswith("timestamp"):
            return _timestamp(self.name)
        if t == "bytea":
            return _bytea
        return _text(self.name, self.max_length)


def target_columns(cur, table: str) -> list[Column]:
    cur.execute("SELECT column_name, data_type, character_maximum_length "
                "FROM information_schema.columns WHERE table_schema = current_schema() "
                "AND table_name = %s ORDER BY ordinal_position", (table,))
    return [Column(*row) for row in cur.fetchall()]


def _integer(name: str) -> Callable[[object], str]:
    def convert(v):
        if v is None:
            return NULL
        if isinstance(v, bool):
            return str(int(v))
        if isinstance(v, int):
            return str(v)
        if isinstance(v, float) and v.is_integer():
            return str(int(v))
        if isinstance(v, str) and v.strip().lstrip("-").isdigit():
            return v.strip()
        raise Rejected("invalid", name, f"not an integer: {str(v)[:40]!r}")
    return convert


def _float(name: str) -> Callable[[object], str]:
    def convert(v):
        if v is None:
            return NULL
        try:
            return repr(float(v))
        except (TypeError, ValueError):
            raise Rejected("invalid", name, f"not a number: {str(v)[:40]!r}") from None
    return convert


def _boolean(name: str) -> Callable[[object], str]:
    def convert(v):
        if v is None:
            return NULL
        if isinstance(v, (int, float)):
            return "t" if v else "f"
        text = str(v).strip().lower()
        if text in ("1", "t", "true", "yes", "y", "on"):
            return "t"
        if text in ("0", "f", "false", "no", "n", "off"):
            return "f"
        raise Rejected("invalid", name, f"not a boolean: {str(v)[:40]!r}")
    return convert


def _timestamp(name: str) -> Callable[[object], str]:
    def convert(v):
        if v is None:
            return NULL
        if isinstance(v, str):
            if _TIMESTAMP.match(v):
                return v
            raise Rejected("invalid", name, f"not a timestamp: {v[:40]!r}")
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            # naive UTC, as Dagster writes them
            return datetime.fromtimestamp(v, UTC).replace(tzinfo=None).isoformat(" ")
        raise Rejected("invalid", name, f"not a timestamp: {str(v)[:40]!r}")
    return convert


def _bytea(v) -> str:
    if v is None:
        return NULL
    if isinstance(v, str):
        v = v.encode("utf-8")
    return "\\\\x" + bytes(v).hex()


def _text(name: str, max_length: int | None) -> Callable[[object], str]:
    def convert(v):
        if v is None:
            return NULL
        if isinstance(v, bytes):
            v = v.decode("utf-8", errors="replace")
        elif not isinstance(v, str):
            v = str(v)
        if max_length is not None and len(v) > max_length:
            raise Rejected("too_long", name,
                           f"{len(v)} characters, the column holds {max_length}")
        if "\x00" in v:
            raise Rejected("invalid", name, "contains a NUL character")
        return esc(v)
    return convert
