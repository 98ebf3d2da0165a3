"""Whole-track analysis streams: blocks in, windows out, the same windows as one batch computation.

``classify``, the watch source and the library decode a file block by block so memory
does not grow with its length; these tests hold the streamed windows to the batch
definition (mel over the whole track, windows every hop plus one aligned to the end,
normalised as the model names: SEED per window, RUNNING over the whole track's frames).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from _helpers_models import with_normalization

from genre_stream.audio.decode import BLOCK_SECONDS, iter_audio, load_audio
from genre_stream.audio.frontend import MelFrontend, loop_to_length, normalize_window
from genre_stream.audio.normalization import RUNNING, SEED, running_normalize
from genre_stream.model.choice import open_engine
from genre_stream.tracks.analysis import analyse_audio, iter_windows, window_starts


def _batch_windows(audio: np.ndarray, frontend: MelFrontend, hop_seconds: float,
                   normalization: str) -> list[tuple[float, float, np.ndarray]]:
    c = frontend.config
    duration = audio.size / c.sample_rate
    if audio.size < c.window_samples:
        if normalization == SEED:
            return [(0.0, duration, frontend.window(audio))]
        looped = frontend.power(loop_to_length(audio, c.window_samples))[: c.window_frames]
        return [(0.0, duration, running_normalize(looped, c.window_frames))]
    power = frontend.power(audio)
    starts = window_starts(power.shape[0], c.window_frames, c.seconds_to_frames(hop_seconds))
    if normalization == SEED:
        windows = [normalize_window(power[s : s + c.window_frames], c.top_db) for s in starts]
    else:
        whole = running_normalize(power, c.window_frames, c.top_db)  # the track's frames, each normalised once
        windows = [whole[s : s + c.window_frames] for s in starts]
    return [(c.frames_to_seconds(s), min(duration, c.frames_to_seconds(s) + c.window_seconds), w) for s, w in zip(starts, windows)]


def _music(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 22050)) / 22050
    y = 0.3 * np.sin(2 * np.pi * 220 * t * (1 + 0.1 * np.sin(0.3 * t))) + 0.05 * rng.standard_normal(t.size)
    return (y * (0.5 + 0.4 * np.sin(0.05 * t))).astype(np.float32)


@pytest.mark.parametrize("normalization", [SEED, RUNNING], ids=["seed", "running"])
@pytest.mark.parametrize("seconds", [3.0, 29.9, 30.0, 71.3, 140.0])
@pytest.mark.parametrize("hop", [10.0, 7.3, 30.0])
@pytest.mark.parametrize("block", [4096, 22050 * 10])
def test_streamed_windows_equal_the_batch_windows(seconds: float, hop: float, block: int, normalization: str) -> None:
    frontend = MelFrontend()
    audio = _music(seconds)
    blocks = [audio[i : i + block] for i in range(0, audio.size, block)]
    streamed = list(iter_windows(blocks, frontend, hop, normalization))
    batch = _batch_windows(audio, frontend, hop, normalization)
    assert [s for s, _, _ in streamed] == [s for s, _, _ in batch]
    assert streamed[-1][1] == batch[-1][1]  # the last window ends at the track's end
    for (_, _, a), (_, _, b) in zip(streamed, batch):
        np.testing.assert_array_equal(a, b)


def test_files_are_decoded_in_bounded_blocks(tmp_path) -> None:
    path = tmp_path / "long.wav"
    rate = 44100
    audio = np.tile(_music(5.0), 9)  # 45 s at 22050 -> written at 44.1 kHz stereo
    from genre_stream.audio.resample import resample

    native = resample(audio, 22050, rate)
    sf.write(path, np.stack([native, native], axis=1), rate, subtype="PCM_16")
    blocks = list(iter_audio(path))
    assert len(blocks) >= 45 / BLOCK_SECONDS
    assert max(b.size for b in blocks) <= BLOCK_SECONDS * 22050 + 1024
    whole = load_audio(path)
    np.testing.assert_array_equal(np.concatenate(blocks), whole)
    assert abs(whole.size - audio.size) <= 1


def test_a_running_model_classifies_the_running_windows(tmp_path: Path) -> None:
    """``analyse_audio`` takes the normalisation from the model: the bundled (RUNNING) model gets slices of the
    whole track's running-normalised frames, a SEED copy of the same weights its per-window windows."""
    running = open_engine("fp32", device="cpu", threads=1)
    seed = open_engine(with_normalization(running.path, SEED, tmp_path), device="cpu", threads=1)
    assert (seed.info.normalization, running.info.normalization) == (SEED, RUNNING)
    frontend = MelFrontend(seed.info.frontend)
    c = frontend.config
    gain = 10 ** (np.random.default_rng(2).uniform(-15, 0, 10) / 20)  # a level of its own every 10 s
    audio = (_music(100.0, seed=1) * np.repeat(gain, 22050 * 10)).astype(np.float32)
    power = frontend.power(audio)
    starts = window_starts(power.shape[0], c.window_frames, c.seconds_to_frames(10.0))
    assert len(starts) >= 8
    whole = running_normalize(power, c.window_frames, c.top_db)
    got = {}
    for engine, windows in [(running, [whole[s : s + c.window_frames] for s in starts]),
                            (seed, [normalize_window(power[s : s + c.window_frames], c.top_db) for s in starts])]:
        got[engine.info.normalization] = np.stack([w.probabilities for w in analyse_audio(audio, engine, hop_seconds=10.0).windows])
        expected = np.concatenate([engine.predict(w[None]).probabilities for w in windows])
        np.testing.assert_allclose(got[engine.info.normalization], expected, atol=1e-5, rtol=0, err_msg=engine.info.normalization)
    assert np.abs(got[SEED] - got[RUNNING]).max() > 1e-3  # the two really differ here, so the model's name chose
