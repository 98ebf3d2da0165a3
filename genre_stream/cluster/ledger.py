"""The JSON-lines results file, which is also the job's memory of what is done.

One line per finished file: the ``classify --json`` object plus the file's ``size``, ``mtime_ns``
and content ``hash``, or an error line (``path``, ``error``, ``retry``). Only the driver writes,
each line with one ``write`` on an ``O_APPEND`` descriptor, flushed to disk at least once a second
and when the job ends; a line is written once, when its result arrives.

A crash can leave at most a torn last line (no newline); opening the file cuts it off, so every
line in the file is whole and the file reads as valid JSON lines. A re-run reads the file and skips
a path whose last line matches its size and mtime: a result of the same model, or an error about
the file itself (corrupt, not audio; ``--retry-errors`` redoes those). Errors of the cluster's own
making (``"retry": true``: a node died and Ray's retries ran out) are always redone. When a path
has several lines (it changed, or was retried), the last one is current.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..common.jsonsafe import dumps

log = logging.getLogger(__name__)

SYNC_EVERY_S = 1.0  # fsync at most this often: a power cut loses at most a second of results


@dataclass(frozen=True)
class Entry:
    """What the ledger says about one path (its last line)."""

    size: int | None
    mtime_ns: int | None
    model: str | None  # None for an error line
    retry: bool = False  # an error line the cluster caused: redo it whatever the options

    @property
    def ok(self) -> bool:
        return self.model is not None

    def covers(self, size: int, mtime_ns: int, model: str, retry_errors: bool) -> bool:
        """Is this file (as it is now) done by this line?"""
        if (self.size, self.mtime_ns) != (size, mtime_ns):
            return False
        return self.model == model if self.ok else not (self.retry or retry_errors)


def read_ledger(path: Path) -> dict[str, Entry]:
    """path -> its last line's entry; a line that is not JSON is skipped with a warning (it was not written here)."""
    entries: dict[str, Entry] = {}
    if not path.exists():
        return entries
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, 1):
            try:
                obj = json.loads(raw)
                key = obj["path"]
            except (ValueError, KeyError, TypeError):
                log.warning("%s:%d: not a result line; ignored", path, number)
                continue
            entries[key] = Entry(obj.get("size"), obj.get("mtime_ns"), None if "error" in obj else obj.get("model"),
                                 bool(obj.get("retry", False)))
    return entries


class ResultsFile:
    """The results file open for appending (a context manager); ``write`` one object per finished file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.lines = 0
        self._fd = -1
        self._synced = 0.0

    def __enter__(self) -> ResultsFile:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._cut_torn_line()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1

    def _cut_torn_line(self) -> None:
        """An interrupted write left a last line without its newline: drop it (its file is redone)."""
        size = os.fstat(self._fd).st_size
        if size == 0:
            return
        with open(self.path, "rb") as fh:
            fh.seek(max(0, size - 65536))
            tail = fh.read()
        if tail.endswith(b"\n"):
            return
        cut = tail.rfind(b"\n")
        keep = size - len(tail) + cut + 1 if cut >= 0 else (0 if size <= 65536 else None)
        if keep is None:  # a torn line longer than 64 KiB: find its start the slow way
            with open(self.path, "rb") as fh:
                keep = fh.read().rfind(b"\n") + 1
        os.truncate(self.path, keep)
        log.warning("%s: cut a torn last line (%d bytes) left by an interrupted run; its file is done again", self.path, size - keep)

    def write(self, obj: dict[str, Any]) -> None:
        """Append one line in one write: a reader or a crash never sees half of it."""
        data = (dumps(obj, compact=False) + "\n").encode("utf-8")  # as `classify --json` writes it
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
        self.lines += 1
        now = time.monotonic()
        if now - self._synced >= SYNC_EVERY_S:
            os.fsync(self._fd)
            self._synced = now
