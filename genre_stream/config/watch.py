"""``[watch]``: what happens to the files of watch: sources (used by sources.watch and the library indexer)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .fields import check_ranges, setting


@dataclass
class WatchConfig:
    done_dir: Path | None = None  # tagged files are moved here; None = never touch user files
    failed_dir: Path | None = None  # files that failed to decode are moved here; None = leave them
    settle_seconds: float = setting(2.0, 0, 3600)  # a file's size must hold this long before it is read
    poll_seconds: float = setting(2.0, 0, 3600, lo_open=True)  # folder rescan interval (also the fallback without inotify)
    library_db: Path | None = None  # also index tagged files into this `genre-stream library` database

    def __post_init__(self) -> None:
        check_ranges(self)
