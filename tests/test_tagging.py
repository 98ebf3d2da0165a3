"""The watch flow's tagging: tag_track (a whole file -> one event) and TrackTagger (publish, index, mark done)."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest
from conftest import REPO, shared_path

from genre_stream.library.db import LibraryDB
from genre_stream.model.calibration import UncertaintyRule
from genre_stream.sinks.messages import GenreEvent
from genre_stream.sources import Source
from genre_stream.watch.tagger import TrackTagger, tag_track

DEMO = REPO / "examples" / "demo.wav"


def test_tag_track(engine):
    path = shared_path("audio/gtzan-country.00000.wav")
    event, result = tag_track("watch-in", path, engine)
    d = event.to_dict()
    assert result is not None and result.genre == d["genre"] and result.embedding.shape == (32,)
    assert d["type"] == "track_tagged" and d["source"] == "watch-in" and d["path"] == str(path)
    assert d["genre"] == "country" and d["confidence"] > 0.5
    assert d["duration"] == pytest.approx(30.0, abs=0.1)
    assert set(d["probabilities"]) == set(engine.labels)
    assert d["state"] == "music"  # a GTZAN clip the model knows: confident under the model's own rule
    strict, _ = tag_track("watch-in", path, engine, uncertainty=UncertaintyRule(threshold=0.999))
    assert strict.to_dict()["state"] == "uncertain" and strict.to_dict()["genre"] == "country"


def test_tag_track_uses_the_configured_silence_level(engine, tmp_path):
    """A quiet track is "silence" (genre null) only below the level the daemon is configured with, as live windows are."""
    import numpy as np
    import soundfile as sf

    audio, sr = sf.read(DEMO, dtype="float32")
    quiet = tmp_path / "quiet.wav"
    level = 20 * np.log10(np.sqrt(np.mean(audio.astype(np.float64) ** 2)))
    sf.write(quiet, audio * np.float32(10 ** ((-50 - level) / 20)), sr)  # about -50 dBFS RMS
    default, result = tag_track("in", quiet, engine)
    assert result is not None and -52 < result.level_dbfs < -48
    assert default.to_dict()["state"] != "silence" and default.to_dict()["genre"] is not None  # -50 > -60 dBFS
    strict, _ = tag_track("in", quiet, engine, silence_dbfs=-40.0)
    assert strict.to_dict()["state"] == "silence" and strict.to_dict()["genre"] is None


def test_tag_track_corrupt_file_is_an_error_event(engine, tmp_path):
    bad = tmp_path / "broken song.mp3"
    bad.write_bytes(b"ID3\x03\x00\x00\x00\x00\x00\x00" + b"\x13\x37" * 500)
    event, result = tag_track("w", bad, engine)
    d = event.to_dict()
    assert result is None
    assert d["type"] == "error" and d["path"] == str(bad)
    assert str(bad) in d["reason"]


class Folder(Source):
    """A watch source as the tagger sees it: it records what it is told, in order, with what was published."""

    id = "inbox"

    def __init__(self, retry: bool = False) -> None:
        self.retry = retry
        self.log: list[tuple] = []

    def run(self, emit, stop: threading.Event) -> None:
        raise AssertionError("the tagger never runs its source")

    def retry_later(self, path: Path) -> bool:
        self.log.append(("retry?", path))
        return self.retry

    def mark_done(self, path: Path, ok: bool) -> None:
        self.log.append(("done", path, ok))

    def publish(self, message: GenreEvent) -> None:
        self.log.append(("published", message.to_dict()))


def test_tagger_publishes_indexes_and_only_then_marks_the_file_done(engine, tmp_path):
    song = tmp_path / "in" / "first song.wav"
    song.parent.mkdir()
    shutil.copy(DEMO, song)
    db = tmp_path / "lib" / "library.sqlite"
    folder = Folder()
    TrackTagger(folder.id, folder, engine, library_db=db).tag(song, folder.publish)
    assert [entry[0] for entry in folder.log] == ["published", "done"]  # a crash in between tags it again: nothing lost
    event = folder.log[0][1]
    assert event["type"] == "track_tagged" and event["source"] == "inbox" and event["path"] == str(song)
    assert folder.log[1] == ("done", song, True)
    with LibraryDB(db) as library:
        track = library.get(song)
    assert track is not None and track.genre == event["genre"] and track.duration == pytest.approx(event["duration"], abs=0.01)


def test_tagger_waits_for_a_file_that_may_still_be_written_then_reports_it(engine, tmp_path):
    bad = tmp_path / "half copied.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 10)
    db = tmp_path / "library.sqlite"
    waiting = Folder(retry=True)
    TrackTagger(waiting.id, waiting, engine, library_db=db).tag(bad, waiting.publish)
    assert waiting.log == [("retry?", bad)]  # no verdict yet: nothing published, not marked done
    failed = Folder(retry=False)
    TrackTagger(failed.id, failed, engine, library_db=db).tag(bad, failed.publish)
    assert [entry[0] for entry in failed.log] == ["retry?", "published", "done"]
    assert failed.log[1][1]["type"] == "error" and str(bad) in failed.log[1][1]["reason"]
    assert failed.log[2] == ("done", bad, False)
    assert not db.exists()  # nothing to index


def test_a_library_that_cannot_be_written_is_an_error_event_and_the_track_still_counts(engine, tmp_path):
    song = tmp_path / "song.wav"
    shutil.copy(DEMO, song)
    not_a_db = tmp_path / "library.sqlite"
    not_a_db.mkdir()
    folder = Folder()
    TrackTagger(folder.id, folder, engine, library_db=not_a_db).tag(song, folder.publish)
    assert [entry[0] for entry in folder.log] == ["published", "published", "done"]
    tagged, problem = folder.log[0][1], folder.log[1][1]
    assert tagged["type"] == "track_tagged"
    assert problem["type"] == "error" and problem["path"] == str(song) and problem["reason"].startswith("library index:")
    assert str(not_a_db) in problem["reason"]
    assert folder.log[2] == ("done", song, True)
