"""``[history]``: whether and how long the tag history is kept (used by sinks.history)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .fields import check_ranges, flag, option, setting

HISTORY_FILENAME = "history.sqlite"


@dataclass
class HistoryConfig:
    """Where and how long the history is kept.

    ``retention_days`` <= 0 keeps everything. ``queue_size`` bounds the messages
    waiting for the writer: at one state per source every few seconds, the default
    absorbs minutes of a stalled disk.
    """

    path: Path
    retention_days: float = 90.0
    queue_size: int = 10_000
    prune_interval_seconds: float = 3600.0

    @classmethod
    def in_state_dir(cls, state_dir: str | Path, **kwargs: Any) -> HistoryConfig:
        return cls(path=Path(state_dir) / HISTORY_FILENAME, **kwargs)


@dataclass
class HistorySettings:
    """The ``[history]`` section of the daemon config (flags ``--history/--no-history``, ``--history-days``)."""

    enabled: bool = option(True, cli=flag("--history/--no-history", help="Record states and events in <state dir>/history.sqlite."))
    retention_days: float = setting(90.0, 0, 36500, note="days (0 keeps everything)",
                                    cli=flag("--history-days", help="Days of tag history to keep; 0 = forever."))

    def __post_init__(self) -> None:
        check_ranges(self)

    def config(self, state_dir: Path) -> HistoryConfig:
        return HistoryConfig.in_state_dir(state_dir, retention_days=self.retention_days)
