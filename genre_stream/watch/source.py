"""A folder whose audio files are classified as whole tracks when they appear or are replaced.

Change detection uses watchdog (inotify on Linux) when it is importable and
works, plus a slow full rescan as a safety net for lost events; without it, a
full rescan every ``poll_seconds``. Either way a file is only handed on once
its size and mtime have stayed the same for ``settle_seconds``: a file being
copied or downloaded is never read half-written, whatever tool writes it. A writer
that pauses for longer than that still gets a chance: a file that fails to decode
is tried once more after ``RETRY_SETTLES`` settle periods (sooner if it changes)
before it is reported and moved to ``failed_dir``.

User files are only read. They are moved only when the user configured a
``done_dir`` / ``failed_dir``, and a move never overwrites anything.

Symbolic links are not followed: a file is watched only under its real path inside the
folder. A link leading out of the folder (``in/music -> /srv/music``, ``in/root -> /``) would
make the source tag, and move, files it was never given; a link inside it (``sub/up -> ..``)
would tag the same file twice under two names. A link found is logged once and skipped.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..audio.decode import AUDIO_EXTENSIONS
from ..common.backoff import Backoff
from ..sources.base import Emit, Source, SourceProblem, TrackReady
from .state import FileKey, WatchState

log = logging.getLogger(__name__)

RETRY_SETTLES = 5  # a file that failed to decode is tried again this many settle periods later

# Names that download managers and copy tools use while a file is incomplete.
PARTIAL_SUFFIXES = frozenset({".part", ".partial", ".tmp", ".crdownload", ".download", ".swp", ".!qb"})


@dataclass
class _Pending:
    key: FileKey
    since: float  # monotonic time this key was first seen


def _identity(folder: Path) -> tuple[int, int] | None:
    """(device, inode) of the folder itself, None while it is missing or not a folder."""
    try:
        st = os.stat(folder)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None


class WatchSource(Source):
    finite = False

    def __init__(
        self,
        source_id: str,
        directory: Path,
        *,
        state_path: Path,
        settle_seconds: float = 2.0,
        poll_seconds: float = 2.0,
        rescan_seconds: float = 300.0,
        done_dir: Path | None = None,
        failed_dir: Path | None = None,
        use_watchdog: bool = True,
    ) -> None:
        self.id = source_id
        self.directory = Path(directory).expanduser().absolute()
        self.settle_seconds = settle_seconds
        self.poll_seconds = poll_seconds
        self.rescan_seconds = rescan_seconds
        self.done_dir = Path(done_dir).expanduser().absolute() if done_dir else None
        self.failed_dir = Path(failed_dir).expanduser().absolute() if failed_dir else None
        self.use_watchdog = use_watchdog
        self.state = WatchState(state_path)
        self._pending: dict[Path, _Pending] = {}
        self._inflight: dict[Path, FileKey] = {}
        self._events: set[Path] = set()
        self._lock = threading.Lock()
        self._watching = False
        self._real_root = os.path.realpath(self.directory)  # updated when the folder (re)appears
        self._links_reported: set[Path] = set()
        self._retried: dict[Path, FileKey] = {}  # files that failed once, with the version that failed
        self._unreadable_reported: set[str] = set()

    # -- the daemon's side -------------------------------------------------------------------

    def stats(self) -> dict[str, float | int]:
        counts = self.state.counts()
        with self._lock:
            inflight = len(self._inflight)
        return {
            "pending": len(self._pending),
            "in_progress": inflight,
            "tagged": counts.get("tagged", 0),
            "failed": counts.get("failed", 0),
            "unsupported": counts.get("unsupported", 0),
            "inotify": int(self._watching),
        }

    def mark_done(self, path: Path, ok: bool) -> None:
        """Remember the file's result so that neither a rescan nor a restart tags it again."""
        path = Path(path)
        with self._lock:
            key = self._inflight.pop(path, None)
        if key is None:
            try:
                key = _key(path.stat())
            except OSError:
                log.warning("%s: %s vanished before its result was recorded", self.id, path)
                return
        with self._lock:
            self._retried.pop(path, None)
        self.state.record(path, key, "tagged" if ok else "failed")
        target = self.done_dir if ok else self.failed_dir
        if target is not None:
            if self._through_link(path):  # a folder on its way was swapped for a link meanwhile
                log.warning("%s: not moving %s: it is no longer inside %s itself", self.id, path, self.directory)
                return
            self._move(path, target)

    def retry_later(self, path: Path) -> bool:
        """Give a file that failed to decode one more try, unless this very version already failed twice.

        Called from the thread that handles this source's items (the one running ``run``).
        """
        with self._lock:
            key = self._inflight.get(path)
            if key is None or self._retried.get(path) == key:
                return False
            del self._inflight[path]
            self._retried[path] = key
        delay = RETRY_SETTLES * self.settle_seconds
        self._pending[path] = _Pending(key, time.monotonic() + delay)  # "first seen" in the future
        log.info("%s: %s could not be decoded; trying once more in %g s in case it was still being written",
                 self.id, path, delay + self.settle_seconds)
        return True

    def _move(self, path: Path, target_root: Path) -> None:
        try:
            rel = path.relative_to(self.directory)
        except ValueError:
            rel = Path(path.name)
        dest = target_root / rel
        n = 1
        while dest.exists():  # never overwrite: "name (1).mp3", "name (2).mp3" ...
            dest = dest.with_name(f"{rel.stem} ({n}){rel.suffix}")
            n += 1
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(path), str(dest))
            log.info("%s: moved %s to %s", self.id, path, dest)
        except OSError as exc:
            log.warning("%s: could not move %s to %s (%s); left in place", self.id, path, dest, exc)

    # -- the source's thread -----------------------------------------------------------------

    def run(self, emit: Emit, stop: threading.Event) -> None:
        backoff = Backoff(maximum=60.0)
        while not self.directory.is_dir():
            emit(SourceProblem(self.id, f"watch folder {self.directory} does not exist (or is not a folder); waiting for it", str(self.directory)))
            if not backoff.wait(stop):
                return
        self._real_root = os.path.realpath(self.directory)
        observer = self._start_observer() if self.use_watchdog else None
        interval = self.rescan_seconds if observer else self.poll_seconds
        log.info("%s: watching %s (%s)", self.id, self.directory, "inotify/watchdog" if observer else f"polling every {interval:g} s")
        next_scan = 0.0
        identity = _identity(self.directory)
        next_check = time.monotonic() + self.poll_seconds
        try:
            while not stop.is_set():
                now = time.monotonic()
                if now >= next_check:
                    # inotify watches die with the folder: a deleted and recreated (or replaced) folder
                    # would otherwise go unseen until the next safety rescan, minutes later.
                    current = _identity(self.directory)
                    if current != identity:
                        if current is None:
                            emit(SourceProblem(self.id, f"watch folder {self.directory} disappeared; waiting for it to come back", str(self.directory)))
                        else:
                            log.info("%s: watch folder %s is back; watching it again", self.id, self.directory)
                            if observer is not None:
                                observer.stop()
                                observer.join(timeout=5)
                                observer = self._start_observer()
                            next_scan = 0.0
                        identity = current
                    next_check = now + self.poll_seconds
                if now >= next_scan and identity is not None:
                    self._scan(self.directory, now)
                    next_scan = now + interval
                self._drain_events(now)
                self._check_pending(emit, now)
                self.state.retry()
                stop.wait(min(0.2, self.settle_seconds / 4))
        finally:
            if observer is not None:
                observer.stop()
                observer.join(timeout=5)

    def _start_observer(self) -> Any | None:
        try:
            from watchdog.events import FileSystemEventHandler
            from watchdog.observers import Observer
        except ImportError:
            log.info("%s: watchdog not installed; polling %s", self.id, self.directory)
            return None
        source = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: Any) -> None:
                if event.is_directory and event.event_type not in ("created", "moved"):
                    return  # a folder's own "modified" accompanies every file event inside it
                for attr in ("src_path", "dest_path"):
                    p = getattr(event, attr, None)
                    if p:
                        with source._lock:
                            source._events.add(Path(os.fsdecode(p)))

        observer = Observer()
        try:
            observer.schedule(Handler(), str(self.directory), recursive=True)
            observer.start()
        except OSError as exc:  # e.g. the inotify watch limit
            log.warning("%s: inotify unavailable (%s); polling every %g s instead", self.id, exc, self.poll_seconds)
            return None
        self._watching = True
        return observer

    def _ignored(self, path: Path) -> bool:
        try:
            rel = path.relative_to(self.directory)
        except ValueError:
            return True
        if any(part.startswith(".") for part in rel.parts):
            return True  # hidden files and the temporary names of rsync and friends
        if path.suffix.lower() in PARTIAL_SUFFIXES:
            return True
        for special in (self.done_dir, self.failed_dir):
            if special is not None and (path == special or special in path.parents):
                return True
        return False

    def _through_link(self, path: Path) -> bool:
        """True when a symbolic link lies between the watched folder and ``path`` (or ``path`` is one)."""
        try:
            rel = path.relative_to(self.directory)
        except ValueError:
            return True
        if rel == Path("."):
            return False  # the folder itself may be a link: the user named it
        return path.is_symlink() or Path(os.path.realpath(path)) != Path(self._real_root) / rel

    def _skip_link(self, path: Path) -> bool:
        """The symlink policy (module docstring): skip, and say so once per path."""
        if not self._through_link(path):
            return False
        if path not in self._links_reported:
            self._links_reported.add(path)
            log.info("%s: not following symbolic link %s (-> %s); only files inside %s itself are watched",
                     self.id, path, os.path.realpath(path), self.directory)
        return True

    def _scan(self, root: Path, now: float) -> None:
        if self._skip_link(root):
            return
        for dirpath, dirnames, filenames in os.walk(root, onerror=self._unreadable):
            base = Path(dirpath)
            dirnames[:] = [d for d in dirnames if not self._ignored(base / d)]
            for name in filenames:
                self._consider(base / name, now)

    def _unreadable(self, exc: OSError) -> None:
        """A folder the scan cannot list: said once per folder, not at every rescan."""
        if exc.filename not in self._unreadable_reported:
            self._unreadable_reported.add(exc.filename)
            log.warning("%s: cannot read folder %s (%s); its files are skipped while it stays unreadable",
                        self.id, exc.filename, exc.strerror)

    def _drain_events(self, now: float) -> None:
        with self._lock:
            events, self._events = self._events, set()
        for p in events:
            if self._ignored(p) or self._skip_link(p):
                continue
            if p.is_dir():
                if not self._ignored(p):
                    self._scan(p, now)  # a folder moved or copied in: its files may bring no events
            else:
                self._consider(p, now)

    def _consider(self, path: Path, now: float) -> None:
        if self._ignored(path) or self._skip_link(path):
            return
        try:
            st = path.stat()
        except OSError:
            self._pending.pop(path, None)  # deleted or renamed away meanwhile
            return
        if not path.is_file():
            return
        key = _key(st)
        with self._lock:
            if self._inflight.get(path) == key:
                return
        if self.state.is_done(path, key):
            return
        current = self._pending.get(path)
        if current is None or current.key != key:
            self._pending[path] = _Pending(key, now)

    def _check_pending(self, emit: Emit, now: float) -> None:
        for path, entry in list(self._pending.items()):
            try:
                key = _key(path.stat())
            except OSError:
                del self._pending[path]
                continue
            if key != entry.key:
                self._pending[path] = _Pending(key, now)  # still being written
                continue
            if now - entry.since < self.settle_seconds or key[0] == 0:
                continue  # not settled yet; empty files are placeholders before a copy starts
            del self._pending[path]
            self._hand_on(path, key, emit)

    def _hand_on(self, path: Path, key: FileKey, emit: Emit) -> None:
        if path.suffix.lower() not in AUDIO_EXTENSIONS:
            supported = " ".join(sorted(AUDIO_EXTENSIONS))
            reason = f"{path}: unsupported format {path.suffix or '(no extension)'!r} (watched formats: {supported})"
            self.state.record(path, key, "unsupported")  # the daemon logs the problem, once
            emit(SourceProblem(self.id, reason, str(path)))
            return
        with self._lock:
            self._inflight[path] = key
        log.info("%s: %s is complete; classifying", self.id, path)
        emit(TrackReady(self.id, path))


def _key(st: os.stat_result) -> FileKey:
    return st.st_size, st.st_mtime_ns
