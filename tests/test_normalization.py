"""The two input normalisations (audio/normalization.py): RUNNING as a stream equals RUNNING at once,
whatever the chunking, stays level-invariant, keeps its memory to one window, and meets SEED where it should."""

from __future__ import annotations

import numpy as np
import pytest

from genre_stream.audio.frontend import normalize_window
from genre_stream.audio.normalization import (
    NORMALIZATIONS,
    RUNNING,
    SEED,
    RunningNormalizer,
    StreamNormalizer,
    running_normalize,
    window_of,
)
from genre_stream.model.info import ModelInfo

W = 647  # frames in a window
MELS = 128


def power_stream(frames: int, seed: int = 0) -> np.ndarray:
    """Power frames whose loudness swings 40 dB (so the running reference moves), with bins more than 80 dB
    below the loudest and every frame's reference well above the logarithm's floor (1e-10)."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames)[:, None]
    level_db = 10 + 20 * np.sin(2 * np.pi * t / (1.3 * W) + rng.uniform(0, 6)) + rng.normal(0.0, 2.0, (frames, 1))
    return (rng.random((frames, MELS)) ** 8 * 10 ** (level_db / 10)).astype(np.float32)


def pushed(norm: RunningNormalizer, power: np.ndarray, sizes: list[int]) -> np.ndarray:
    """``power`` pushed in chunks of ``sizes`` (cycled), then finished: everything the stream returned."""
    out, i, k = [], 0, 0
    while i < power.shape[0]:
        out.append(norm.push(power[i : i + sizes[k % len(sizes)]]))
        i += sizes[k % len(sizes)]
        k += 1
    rest = norm.finish()
    return np.concatenate(out + ([rest] if rest.size else []))


@pytest.mark.parametrize("seed", range(5))
def test_any_chunking_gives_the_frames_of_one_push(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    power = power_stream(int(rng.integers(2 * W, 4 * W)), seed)
    expected = running_normalize(power, W)
    sizes = [int(s) for s in rng.choice([0, 1, 3, 22, 108, 400, W, W + 5, 2000], size=40)]
    got = pushed(RunningNormalizer(W), power, sizes)
    assert got.dtype == np.float32 and got.shape == power.shape
    np.testing.assert_array_equal(got, expected)


def test_each_frame_is_scaled_by_the_loudest_frame_of_the_window_ending_at_it() -> None:
    """The definition written out: the first window against its own loudest frame, later frames against the last 30 s."""
    power = power_stream(3 * W, seed=7)
    db = 10 * np.log10(np.maximum(power.astype(np.float64), 1e-10))
    peaks = db.max(axis=1)
    ref = np.array([peaks[:W].max() if t < W else peaks[t - W + 1 : t + 1].max() for t in range(power.shape[0])])
    expected = (np.clip(ref[:, None] - db, 0, 80) / 80).astype(np.float32)
    np.testing.assert_array_equal(running_normalize(power, W), expected)


def test_one_window_with_80_db_of_range_is_normalised_exactly_like_seed() -> None:
    power = power_stream(W, seed=1)
    db = 10 * np.log10(np.maximum(power.astype(np.float64), 1e-10))
    assert db.max() - db.min() > 80
    np.testing.assert_array_equal(running_normalize(power, W), normalize_window(power))
    np.testing.assert_array_equal(window_of(RUNNING, power), normalize_window(power))
    # with less range SEED stretches the window's own range to [0, 1], RUNNING keeps the fixed 80 dB
    narrow = (1.0 + power_stream(W, seed=1)).astype(np.float32)
    assert not np.array_equal(running_normalize(narrow, W), normalize_window(narrow))
    assert running_normalize(narrow, W).max() < 0.5 and normalize_window(narrow).max() == 1.0


def test_a_stream_20_db_louder_gives_the_same_frames() -> None:
    power = power_stream(3 * W, seed=2)
    np.testing.assert_allclose(running_normalize(100.0 * power, W), running_normalize(power, W), atol=1e-6, rtol=0)


def test_a_level_step_is_forgotten_one_window_later() -> None:
    """The reference follows the level: 30 s after a 20 dB drop the frames are those of a stream that never was louder."""
    power = power_stream(4 * W, seed=3)
    step = 2 * W
    dropped = power.copy()
    dropped[:step] *= 100.0  # 20 dB louder until the step
    a, b = running_normalize(dropped, W), running_normalize(power, W)
    gap = a[step : step + W - 1] - b[step : step + W - 1]
    assert gap.max() > 0.2  # the louder frames before the step still set the reference: the quiet ones sit lower
    np.testing.assert_allclose(a[step + W - 1 :], b[step + W - 1 :], atol=1e-6, rtol=0)


def test_memory_stays_within_one_window() -> None:
    """A stream that only gets quieter is the deque's worst case: every frame is a candidate maximum."""
    rng = np.random.default_rng(4)
    level_db = -np.linspace(0, 60, 4 * W)[:, None]
    power = (np.linspace(0.5, 1.0, MELS) * 10 ** (level_db / 10)).astype(np.float32)
    norm = RunningNormalizer(W)
    longest_deque = longest_head = 0
    i = 0
    while i < power.shape[0]:
        n = int(rng.integers(1, 60))
        norm.push(power[i : i + n])
        i += n
        longest_deque, longest_head = max(longest_deque, len(norm._maxima)), max(longest_head, len(norm._head))
        if norm.frames_seen >= W:
            assert not norm._head  # the first window was released
    assert longest_deque == W and 0 < longest_head < W  # the deque reached its bound and never passed it


def test_silence_is_zeros() -> None:
    silence = np.zeros((2 * W, MELS), np.float32)
    out = running_normalize(silence, W)
    assert np.isfinite(out).all() and not out.any()
    assert not window_of(RUNNING, silence[:100]).any() and not window_of(SEED, silence[:100]).any()


@pytest.mark.parametrize("frames", [1, 100, W - 1])
def test_a_stream_shorter_than_a_window_is_held_then_normalised_as_one_window(frames: int) -> None:
    power = power_stream(frames, seed=5)
    norm = RunningNormalizer(W)
    assert norm.push(power).shape == (0, MELS)
    first = norm.provisional()
    np.testing.assert_array_equal(norm.provisional(), first)  # looking consumes nothing
    np.testing.assert_array_equal(first, window_of(RUNNING, power))
    np.testing.assert_array_equal(norm.finish(), first)
    assert norm.finish().size == 0  # released once
    np.testing.assert_array_equal(running_normalize(power, W), first)


def test_reset_starts_a_new_stream() -> None:
    a, b = power_stream(2 * W, seed=6), power_stream(W + 50, seed=8)
    norm = RunningNormalizer(W)
    norm.push(a)
    norm.reset()
    assert norm.frames_seen == 0
    np.testing.assert_array_equal(pushed(norm, b, [37]), running_normalize(b, W))


def test_stream_normalizer_chooses_by_name() -> None:
    power = power_stream(2 * W, seed=9)
    seed = StreamNormalizer(SEED, W, 80.0)
    assert seed.push(power) is power and seed.held().size == 0  # SEED stores power: each window is normalised when cut
    np.testing.assert_array_equal(seed.window(power[5 : 5 + W]), normalize_window(power[5 : 5 + W]))
    running = StreamNormalizer(RUNNING, W, 80.0)
    assert running.push(power[:100]).shape[0] == 0
    np.testing.assert_array_equal(running.held(), running_normalize(power[:100], W))
    stored = np.concatenate([running.push(power[100:]), running.finish().reshape(-1, MELS)])
    np.testing.assert_array_equal(stored, running_normalize(power, W))
    window = running.window(stored[5 : 5 + W])
    np.testing.assert_array_equal(window, stored[5 : 5 + W])
    window[:] = 0.0
    assert stored[5:].any()  # the window is the caller's own copy
    with pytest.raises(ValueError, match="unknown normalization 'db'"):
        StreamNormalizer("db", W, 80.0)


def test_models_may_name_either_normalisation_and_nothing_else() -> None:
    assert ModelInfo.from_dict({"labels": ["a"]}).normalization == SEED  # models from before the name existed
    for name in NORMALIZATIONS:
        assert ModelInfo.from_json(ModelInfo(["a"], normalization=name).to_json()).normalization == name
    with pytest.raises(ValueError, match="knows db_ref_max_top80_div_min, db_ref_running_max_top80"):
        ModelInfo.from_dict({"labels": ["a"], "normalization": "per_channel"})
