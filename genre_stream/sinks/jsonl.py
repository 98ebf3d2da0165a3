"""JSON lines: the embedded default sink, so a bare machine without a broker still gets results.

Each state and event is written as one line with exactly the MQTT payload, flushed at once,
so ``genre-stream run ... | jq`` or ``tail -f`` see messages as they happen. Files are opened
for appending: an existing log is never truncated. When the file is renamed or deleted under the
daemon (logrotate without copytruncate), the next line goes to a fresh file at the configured path.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path
from typing import TextIO

from ..common.jsonsafe import dumps
from .base import Publishable, SourceAvailability, SourceInfo
from .messages import SourceStats

log = logging.getLogger(__name__)


class JsonlSink:
    """Writes states and events (not stats, which would drown them) to stdout (``-``) or a file."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._fh: TextIO | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        if self.target == "-":
            self._fh = sys.stdout
            return
        self._fh = self._open()

    def _open(self) -> TextIO:
        path = Path(self.target)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return open(path, "a", encoding="utf-8")
        except OSError as exc:
            raise OSError(f"{path}: cannot open JSON lines output ({exc.strerror})") from exc

    def _reopen_if_rotated(self) -> None:
        """Follow a rotation: the path now names another file (or none) than the one we hold."""
        assert self._fh is not None
        try:
            current = os.stat(self.target)
            held = os.fstat(self._fh.fileno())
            if (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino):
                return
        except FileNotFoundError:
            pass
        self._fh.close()
        self._fh = self._open()
        log.info("%s was rotated or removed; writing JSON lines to a new file", self.target)

    def publish(self, message: Publishable) -> None:
        if isinstance(message, SourceStats | SourceAvailability):
            return
        line = dumps(message.to_dict())
        with self._lock:
            if self._fh is None:
                raise RuntimeError("JsonlSink.publish before start")
            try:
                if self.target != "-":
                    self._reopen_if_rotated()
                self._fh.write(line + "\n")
                self._fh.flush()
            except BrokenPipeError:
                # A closed pipe (| head) is the reader's choice, not a fault of the daemon.
                log.warning("JSON lines reader went away; further lines are dropped")
                self._fh = open(os.devnull, "w", encoding="utf-8")

    def sources_changed(self, sources: list[SourceInfo], model: str) -> None:
        """JSON lines have no discovery."""

    def stats(self) -> dict[str, int | float]:
        return {}

    def close(self, timeout: float) -> bool:
        with self._lock:
            if self._fh is not None and self._fh is not sys.stdout:
                self._fh.close()
            self._fh = None
        return True
