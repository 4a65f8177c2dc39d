"""The keeper's log: one JSON object per line (findings, actions, startup, stop), rotated by
size, in `dagpg.watch.log_dir` (reports/logs/watch.jsonl). Never holds a password."""

from __future__ import annotations

import json
import logging
import logging.handlers
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dagpg.errors import ConfigurationError
from dagpg.settings import Watch

FILE_NAME = Watch.LOG_FILE


class JsonLog:
    def __init__(self, folder: Path, *, max_bytes: int, backups: int):
        self.path = folder / FILE_NAME
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self._handler = logging.handlers.RotatingFileHandler(
                self.path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        except OSError as exc:
            raise ConfigurationError(
                f"cannot write the keeper's log {self.path}: {exc.strerror}; fix "
                "dagpg.watch.log_dir in config.yml or the folder's permissions") from None
        self._handler.setFormatter(logging.Formatter("%(message)s"))

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps({"ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
                           **record}, default=str, sort_keys=False)
        self._handler.handle(logging.makeLogRecord({"msg": line, "levelno": logging.INFO}))

    def close(self) -> None:
        self._handler.close()


def read(path: Path) -> list[dict[str, Any]]:
    """Every record of a keeper log (the current file only)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()]
