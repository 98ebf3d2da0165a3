"""The runtime frontend: looping, normalisation edge cases, incremental = batch (parity with torch/librosa: test_frontend_parity.py)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import music_like

from genre_stream.audio.frontend import FrontendConfig, MelFrontend, MelRingBuffer, StreamingMel, loop_to_length, normalize_window


@pytest.fixture(scope="module")
def frontend() -> MelFrontend:
    return MelFrontend()


def test_normalization_of_digital_silence_is_finite() -> None:
    x = normalize_window(np.zeros((647, 128), np.float32))
    assert np.all(np.isfinite(x)) and np.all(x == 0)


def test_window_loops_short_clips_to_thirty_seconds(frontend: MelFrontend) -> None:
    y = music_like(3.0)
    looped = loop_to_length(y, frontend.config.window_samples)
    assert looped.size == frontend.config.window_samples
    np.testing.assert_array_equal(looped[y.size : 2 * y.size], y)
    w = frontend.window(y)
    assert w.shape == (647, 128) and w.dtype == np.float32
    with pytest.raises(ValueError):
        loop_to_length(np.zeros(0, np.float32), 10)


@pytest.mark.parametrize("chunk", [256, 1000, 4410, 70000])
def test_incremental_equals_batch_except_the_final_frames(frontend: MelFrontend, chunk: int) -> None:
    y = music_like(6.0)
    batch = frontend.power(y)
    stream = StreamingMel(frontend)
    got = [stream.push(y[i : i + chunk]) for i in range(0, y.size, chunk)]
    frames = np.concatenate(got)
    # Every frame whose window lies inside the audio is available live and equal to the batch one;
    # only the last frames, which the batch path computes by reflecting the end of the file, are not.
    complete = (y.size - 1024) // 1024 + 1
    assert frames.shape[0] == complete
    assert batch.shape[0] - frames.shape[0] <= FrontendConfig().n_fft // (2 * 1024) + 1
    np.testing.assert_allclose(frames, batch[: frames.shape[0]], rtol=1e-6, atol=1e-9)
    assert stream.frames_emitted == frames.shape[0]


@pytest.mark.parametrize("length", [10, 1024, 1025, 5000, 22050 * 3 + 17])
@pytest.mark.parametrize("chunk", [7, 1000, 100000])
def test_finished_stream_equals_batch_exactly(frontend: MelFrontend, length: int, chunk: int) -> None:
    y = music_like(length / 22050 + 0.01)[:length]
    stream = StreamingMel(frontend)
    frames = np.concatenate([*(stream.push(y[i : i + chunk]) for i in range(0, y.size, chunk)), stream.finish()])
    np.testing.assert_array_equal(frames, frontend.power(y))
    assert stream.frames_emitted == 0  # finish() resets, ready for the next stream


def test_a_model_of_another_frontend_version_is_refused() -> None:
    with pytest.raises(ValueError, match="frontend version 2"):
        MelFrontend(FrontendConfig(version=2))
    assert FrontendConfig.from_dict({"n_mels": 128}).version == 1  # records older than the field


def test_frames_appear_as_soon_as_their_hop_is_complete(frontend: MelFrontend) -> None:
    stream = StreamingMel(frontend)
    y = music_like(1.0)
    # frame 0 is centred on sample 0; its left half reflects y[1..1024], so it needs 1025 samples
    assert stream.push(y[:1024]).shape[0] == 0
    assert stream.push(y[1024:1025]).shape[0] == 1
    # frame 1 covers y[0:2048]
    assert stream.push(y[1025:2047]).shape[0] == 0
    assert stream.push(y[2047:2048]).shape[0] == 1


def test_ring_buffer_keeps_latest_frames_in_order() -> None:
    ring = MelRingBuffer(capacity=5, n_mels=2)
    for i in range(3):
        ring.extend(np.full((1, 2), i, np.float32))
    assert len(ring) == 3 and ring.latest()[:, 0].tolist() == [0, 1, 2]
    ring.extend(np.arange(4, dtype=np.float32).repeat(2).reshape(4, 2) + 10)
    assert len(ring) == 5 and ring.total_frames == 7
    assert ring.latest()[:, 0].tolist() == [2, 10, 11, 12, 13]
    ring.extend(np.arange(6, dtype=np.float32).repeat(2).reshape(6, 2) + 100)  # more than capacity at once
    assert ring.latest()[:, 0].tolist() == [101, 102, 103, 104, 105]
