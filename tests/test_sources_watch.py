"""Watch folder: real files on disk, real SQLite state, watchdog (inotify) and the polling fallback."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import pytest
from _helpers_sources import Collector, running, write_tone

from genre_stream.sources import SourceProblem, TrackReady, parse_source
from genre_stream.watch.tagger import tag_track

SETTLE = 0.5


def make_source(folder: Path, state: Path, use_watchdog: bool = True, **kwargs):
    return parse_source(f"watch:{folder}", state_dir=state, settle_seconds=SETTLE, poll_seconds=0.2, use_watchdog=use_watchdog, **kwargs)


class Tagger:
    """Does what the daemon does with a watch source's items: tag the track, then mark it done."""

    def __init__(self, source, engine) -> None:
        self.source = source
        self.engine = engine
        self.events: list[dict] = []
        self.sizes: dict[Path, int] = {}
        self.collector = Collector(self.handle)
        self._lock = threading.Lock()

    def handle(self, item) -> None:
        if isinstance(item, TrackReady):
            self.sizes[item.path] = item.path.stat().st_size  # what the file looked like when handed on
            event = tag_track(self.source.id, item.path, self.engine)[0].to_dict()
            with self._lock:
                self.events.append(event)
            self.source.mark_done(item.path, event["type"] == "track_tagged")

    def tagged(self) -> list[str]:
        with self._lock:
            return sorted(Path(e["path"]).name for e in self.events if e["type"] == "track_tagged")

    def errors(self) -> list[dict]:
        with self._lock:
            return [e for e in self.events if e["type"] == "error"]

    def wait_events(self, n: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.events) >= n:
                    return
            time.sleep(0.05)
        raise AssertionError(f"expected {n} events, got {self.events}")


def fingerprint(folder: Path) -> dict[str, tuple[str, int]]:
    """Content hash and mtime of every file: the watch source must leave them exactly as they were."""
    return {
        str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def settle_time() -> None:
    """Long enough for any pending file to settle and be handed on (used before asserting 'nothing more')."""
    time.sleep(SETTLE * 4)


@pytest.mark.parametrize("use_watchdog", [True, False], ids=["inotify", "polling"])
def test_files_appear_partial_writes_odd_names_and_bad_files(tmp_path, engine, use_watchdog):
    folder = tmp_path / "in box"
    folder.mkdir()
    write_tone(folder / "already there.wav", 1.0)
    source = make_source(folder, tmp_path / "state", use_watchdog)
    tagger = Tagger(source, engine)
    with running(source, tagger.collector):
        tagger.wait_events(1)
        # a file written in pieces, with pauses shorter than the settle time
        src_bytes = (tmp_path / "src.wav")
        write_tone(src_bytes, 2.0, freq=220.0)
        data = src_bytes.read_bytes()
        target = folder / "sub dir" / "Ünïcødé — slow copy.wav"
        target.parent.mkdir()
        with open(target, "wb") as fh:
            for i in range(4):
                fh.write(data[i * len(data) // 4 : (i + 1) * len(data) // 4])
                fh.flush()
                time.sleep(SETTLE * 0.4)
        # a corrupt file and an unsupported one
        (folder / "broken.mp3").write_bytes(b"\xff\xfb\x90\x00" + b"garbage" * 300)
        (folder / "notes.txt").write_text("not audio")
        tagger.wait_events(3)
        assert tagger.collector.wait_for(lambda items: any(isinstance(i, SourceProblem) for i in items), timeout=10)
        settle_time()
    assert tagger.tagged() == ["already there.wav", "Ünïcødé — slow copy.wav"]
    assert tagger.sizes[target] == len(data), "the file was handed on only once complete"
    [error] = tagger.errors()
    assert error["path"] == str(folder / "broken.mp3") and "broken.mp3" in error["reason"]
    [problem] = tagger.collector.problems()
    assert problem.path == str(folder / "notes.txt") and "unsupported format '.txt'" in problem.reason
    assert len(tagger.collector.tracks()) == 3, "every file handed on exactly once"
    stats = source.stats()
    assert stats["tagged"] == 2 and stats["failed"] == 1 and stats["unsupported"] == 1
    assert stats["inotify"] == int(use_watchdog)


def test_restart_neither_retags_nor_misses(tmp_path, engine):
    folder = tmp_path / "music"
    folder.mkdir()
    state = tmp_path / "state"
    write_tone(folder / "a.wav", 1.0)
    write_tone(folder / "b.wav", 1.0)
    source = make_source(folder, state)
    tagger = Tagger(source, engine)
    with running(source, tagger.collector):
        tagger.wait_events(2)
    assert tagger.tagged() == ["a.wav", "b.wav"]
    before = fingerprint(folder)

    # while the daemon is down: a new file arrives, b is replaced by other content
    write_tone(folder / "c.wav", 1.0)
    write_tone(folder / "b.wav", 1.5, freq=330.0)
    os.utime(folder / "b.wav", ns=(time.time_ns(), time.time_ns() + 10**9))  # mtime surely different
    # ...and a file that was handed on but whose result never arrived (crash in between)
    write_tone(folder / "d.wav", 1.0)
    crashed = make_source(folder, state)
    seen = Collector()
    with running(crashed, seen):  # nobody calls mark_done: like a crash before publishing
        assert seen.wait_for(lambda items: len(items) >= 3, timeout=20)
    assert sorted(t.path.name for t in seen.tracks()) == ["b.wav", "c.wav", "d.wav"]

    restarted = make_source(folder, state)
    tagger2 = Tagger(restarted, engine)
    with running(restarted, tagger2.collector):
        tagger2.wait_events(3)
        settle_time()
    assert tagger2.tagged() == ["b.wav", "c.wav", "d.wav"], "a.wav is not tagged again, nothing is missed"
    assert fingerprint(folder)["a.wav"] == before["a.wav"]

    again = make_source(folder, state)
    quiet = Collector()
    with running(again, quiet):
        settle_time()
    assert quiet.items == [], "everything is remembered"


def test_user_files_are_never_touched(tmp_path, engine):
    folder = tmp_path / "lib"
    (folder / "x").mkdir(parents=True)
    write_tone(folder / "x" / "one.wav", 1.0)
    (folder / "bad.wav").write_bytes(b"RIFF....WAVEfmt nonsense")
    (folder / "readme.md").write_text("hello")
    before = fingerprint(folder)
    source = make_source(folder, tmp_path / "state")
    tagger = Tagger(source, engine)
    with running(source, tagger.collector):
        tagger.wait_events(2)
        settle_time()
    assert fingerprint(folder) == before
    assert sorted(p.name for p in folder.rglob("*")) == ["bad.wav", "one.wav", "readme.md", "x"]


def test_done_and_failed_folders_move_without_overwriting(tmp_path, engine):
    folder, done, failed = tmp_path / "in", tmp_path / "done", tmp_path / "failed"
    (folder / "album").mkdir(parents=True)
    (done / "album").mkdir(parents=True)
    (done / "album" / "song.wav").write_bytes(b"an older file with the same name")
    write_tone(folder / "album" / "song.wav", 1.0)
    (folder / "bad.flac").write_bytes(b"fLaC" + b"\x00" * 100)
    source = make_source(folder, tmp_path / "state", done_dir=done, failed_dir=failed)
    tagger = Tagger(source, engine)
    with running(source, tagger.collector):
        tagger.wait_events(2)
        settle_time()
    assert (done / "album" / "song.wav").read_bytes() == b"an older file with the same name"
    assert (done / "album" / "song (1).wav").is_file()
    assert (failed / "bad.flac").read_bytes() == b"fLaC" + b"\x00" * 100
    assert not any(folder.rglob("*.wav")) and not (folder / "bad.flac").exists()


def test_temporary_names_wait_for_the_final_rename(tmp_path, engine):
    folder = tmp_path / "in"
    folder.mkdir()
    source = make_source(folder, tmp_path / "state")
    tagger = Tagger(source, engine)
    with running(source, tagger.collector):
        write_tone(tmp_path / "t.wav", 1.0)
        hidden = folder / ".song.wav.Xy12ab"  # rsync's temporary name
        part = folder / "download.wav.part"
        hidden.write_bytes((tmp_path / "t.wav").read_bytes())
        part.write_bytes((tmp_path / "t.wav").read_bytes())
        settle_time()
        assert tagger.collector.items == []
        hidden.rename(folder / "song.wav")
        part.rename(folder / "download.wav")
        tagger.wait_events(2)
    assert tagger.tagged() == ["download.wav", "song.wav"]


def test_missing_folder_is_reported_and_picked_up_later(tmp_path, engine):
    folder = tmp_path / "usb-stick"
    source = make_source(folder, tmp_path / "state")
    tagger = Tagger(source, engine)
    with running(source, tagger.collector):
        assert tagger.collector.wait_for(lambda items: len(items) >= 1, timeout=10)
        [problem] = tagger.collector.problems()
        assert "does not exist" in problem.reason and str(folder) in problem.reason
        folder.mkdir()
        write_tone(folder / "late.wav", 1.0)
        tagger.wait_events(1, timeout=20)
    assert tagger.tagged() == ["late.wav"]


@pytest.mark.parametrize("use_watchdog", [True, False], ids=["inotify", "polling"])
def test_folder_moved_in_brings_its_files(tmp_path, engine, use_watchdog):
    folder = tmp_path / "in"
    folder.mkdir()
    album = tmp_path / "Album (2024)"
    (album / "CD 1").mkdir(parents=True)
    write_tone(album / "CD 1" / "01 intro.wav", 1.0)
    write_tone(album / "02 song.wav", 1.0)
    source = make_source(folder, tmp_path / "state", use_watchdog)
    tagger = Tagger(source, engine)
    with running(source, tagger.collector):
        time.sleep(SETTLE)
        album.rename(folder / album.name)  # a rename brings no per-file events
        tagger.wait_events(2)
    assert tagger.tagged() == ["01 intro.wav", "02 song.wav"]
