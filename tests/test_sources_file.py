"""File source: a recording replayed through real ffmpeg, paced like live audio or as fast as possible."""

from __future__ import annotations

import time

import numpy as np
import pytest
import soundfile as sf
from _helpers_sources import Collector, dominant_frequency, running, write_tone
from conftest import shared_path

from genre_stream.audio.decode import ffmpeg_executable, ffmpeg_resample_args, load_audio
from genre_stream.sources import parse_source


def run_to_end(source) -> Collector:
    collector = Collector()
    with running(source, collector) as thread:
        thread.join(timeout=60)
        assert not thread.is_alive(), "a file source ends by itself"
    return collector


def test_fast_playback_delivers_the_decoded_audio(tmp_path):
    path = tmp_path / "tone ö.flac"
    write_tone(path, 2.0, freq=1000.0, sr=44100)
    src = parse_source(f"file:{path}", state_dir=tmp_path, realtime=False, chunk_seconds=0.1)
    got = run_to_end(src)
    chunks = got.chunks()
    assert not got.problems()
    audio = got.audio()
    assert audio.size == 2 * 22050  # resampled from 44.1 kHz by ffmpeg
    assert dominant_frequency(audio) == pytest.approx(1000.0, abs=2.0)
    assert all(c.samples.dtype == np.float32 and c.source == src.id for c in chunks)
    assert [c.samples.size for c in chunks[:-1]] == [2205] * (len(chunks) - 1)
    times = np.array([c.time for c in chunks])
    np.testing.assert_allclose(np.diff(times), 0.1, atol=1e-9)  # contiguous stream time


def test_realtime_pacing_follows_stream_time(tmp_path):
    path = tmp_path / "one.wav"
    write_tone(path, 1.0)
    before = time.monotonic()
    got = run_to_end(parse_source(f"file:{path}", state_dir=tmp_path, realtime=True, chunk_seconds=0.2))
    chunks = got.chunks()
    assert len(chunks) == 5
    # no chunk is emitted before the real-time clock (started after `before`) reaches its last sample
    for c in chunks:
        assert c.captured_at - before >= c.time + c.samples.size / 22050


def test_same_samples_as_load_audio(tmp_path):
    path = shared_path("audio/jtd-jazz-trio-5s.wav")
    got = run_to_end(parse_source(f"file:{path}", state_dir=tmp_path, realtime=False))
    expected = load_audio(path)  # 44.1 kHz stereo: down-mixed and resampled by both paths
    audio = got.audio()
    assert audio.size == expected.size
    # same down-mix (channel mean) and level
    assert np.sqrt(np.mean(audio**2)) == pytest.approx(np.sqrt(np.mean(expected**2)), rel=0.01)
    assert np.corrcoef(audio, expected)[0, 1] > 0.999
    exe = ffmpeg_executable()
    if exe and "resampler=soxr" in " ".join(ffmpeg_resample_args(exe, 22050)):
        # one resampler: ffmpeg's libsoxr and python-soxr give the same samples
        assert np.abs(audio - expected).max() < 1e-5


def test_missing_file_is_a_problem_not_a_crash(tmp_path):
    got = run_to_end(parse_source(f"file:{tmp_path / 'nope.wav'}", state_dir=tmp_path))
    [problem] = got.problems()
    assert "nope.wav" in problem.reason and "no such file" in problem.reason
    assert not got.chunks()


def test_corrupt_file_is_a_problem(tmp_path):
    path = tmp_path / "corrupt.wav"
    path.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + bytes(range(256)) * 4)
    got = run_to_end(parse_source(f"file:{path}", state_dir=tmp_path, realtime=False))
    [problem] = got.problems()
    assert str(path) in problem.reason and problem.path == str(path)
    assert "not decodable" in problem.reason


def test_stop_ends_a_realtime_file_early(tmp_path):
    path = tmp_path / "long.wav"
    sf.write(str(path), np.zeros(22050 * 60, dtype=np.float32), 22050)
    collector = Collector()
    src = parse_source(f"file:{path}", state_dir=tmp_path)
    with running(src, collector):
        assert collector.wait_for(lambda items: len(items) >= 2, timeout=10)
    assert src.stats()["position_seconds"] < 30  # stopped long before the end
    assert not collector.problems()
