"""The --source syntax: kinds, default ids, id overrides and the errors for bad specs."""

from __future__ import annotations

from pathlib import Path

import pytest

from genre_stream.common.redact import redact_url as redact
from genre_stream.sources import parse_source
from genre_stream.sources.file import FileSource
from genre_stream.sources.mic import MicSource
from genre_stream.sources.stream import StreamSource
from genre_stream.watch.source import WatchSource


def test_mic_specs(tmp_path):
    src = parse_source("mic", state_dir=tmp_path)
    assert isinstance(src, MicSource) and src.id == "mic" and src.device is None and not src.finite
    src = parse_source("mic:2", state_dir=tmp_path)
    assert src.id == "mic-2" and src.device == "2"
    src = parse_source("studio=mic:USB Audio CODEC", state_dir=tmp_path)
    assert src.id == "studio" and src.device == "USB Audio CODEC"
    assert parse_source("mic:USB Audio", state_dir=tmp_path).id == "mic-usb-audio"


def test_watch_spec_creates_state_in_state_dir(tmp_path):
    folder = tmp_path / "Incoming Music"
    folder.mkdir()
    src = parse_source(f"watch:{folder}", state_dir=tmp_path / "state")
    assert isinstance(src, WatchSource) and src.id == "watch-incoming-music" and not src.finite
    assert (tmp_path / "state" / "watch-incoming-music.sqlite3").is_file()


def test_file_spec(tmp_path):
    src = parse_source("file:/music/Live Set 2024.flac", state_dir=tmp_path, realtime=False)
    assert isinstance(src, FileSource) and src.finite and not src.realtime
    assert src.id == "file-live-set-2024" and src.path == Path("/music/Live Set 2024.flac")


def test_stream_spec(tmp_path):
    src = parse_source("stream:http://user:pw@radio.example.org:8000/live.mp3?x=1", state_dir=tmp_path)
    assert isinstance(src, StreamSource) and src.id == "stream-radio-example-org"
    assert src.url == "http://user:pw@radio.example.org:8000/live.mp3?x=1"
    assert redact(src.url) == "http://user:***@radio.example.org:8000/live.mp3?x=1"
    assert parse_source("fm=stream:rtsp://10.0.0.5/audio", state_dir=tmp_path).id == "fm"


@pytest.mark.parametrize(
    "spec, message",
    [
        ("", "empty source spec"),
        ("speaker:1", "unknown kind 'speaker'"),
        ("watch:", "watch needs an argument"),
        ("file:", "file needs an argument"),
        ("stream:radio.example.org", "needs a URL"),
        ("my/id=mic", "id 'my/id' must"),
        ("a+b=mic", "id 'a\\+b' must"),
        ("=mic", "id '' must"),
    ],
)
def test_bad_specs_are_explained(tmp_path, spec, message):
    with pytest.raises(ValueError, match=message) as info:
        parse_source(spec, state_dir=tmp_path)
    if spec:
        assert repr(spec) in str(info.value)  # the message quotes what the user wrote


def test_watch_on_a_file_is_refused(tmp_path):
    f = tmp_path / "song.wav"
    f.write_bytes(b"x")
    with pytest.raises(ValueError, match="is not a folder"):
        parse_source(f"watch:{f}", state_dir=tmp_path)


def test_unusable_state_file_is_named(tmp_path):
    from genre_stream.sources.base import SourceError

    folder = tmp_path / "in"
    folder.mkdir()
    state = tmp_path / "state"
    state.mkdir()
    (state / "watch-in.sqlite3").write_bytes(b"this is not an sqlite database" * 100)
    with pytest.raises(SourceError, match="watch-in.sqlite3"):
        parse_source(f"watch:{folder}", state_dir=state)
