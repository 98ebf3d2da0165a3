"""SpecAugment, pitch-shift option parsing and the stratified 8/1/1 folds."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.augment import SILENCE, SpecAugmentConfig, parse_pitch_shifts, spec_augment, time_warp
from trainer.split import fold_split, partition

pytestmark = pytest.mark.train  # needs the [train] extra


def _ramp(frames: int = 200, bands: int = 128) -> np.ndarray:
    return np.tile(np.linspace(0.0, 0.9, frames, dtype=np.float32)[:, None], (1, bands))


def test_masks_are_silence_within_their_limits() -> None:
    window = _ramp() * 0.5
    for seed in range(20):
        out = spec_augment(window, SpecAugmentConfig(freq_mask=27, time_mask=100, time_warp=0), np.random.default_rng(seed))
        masked_bands = np.all(out == SILENCE, axis=0).sum()
        masked_frames = np.all(out == SILENCE, axis=1).sum()
        assert masked_bands <= 27 and masked_frames <= 100
        assert out.shape == window.shape
    outs = [spec_augment(window, SpecAugmentConfig(27, 100, 0), np.random.default_rng(s)) for s in range(20)]
    assert any(np.all(o == SILENCE, axis=0).sum() > 0 for o in outs)
    np.testing.assert_array_equal(window, _ramp() * 0.5)  # input untouched


def test_augmentation_is_a_function_of_the_generator() -> None:
    w = np.random.default_rng(0).random((64, 128), dtype=np.float32)
    a = spec_augment(w, SpecAugmentConfig(), np.random.default_rng([1, 2, 3]))
    b = spec_augment(w, SpecAugmentConfig(), np.random.default_rng([1, 2, 3]))
    c = spec_augment(w, SpecAugmentConfig(), np.random.default_rng([1, 2, 4]))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_time_warp_keeps_ends_and_order() -> None:
    window = _ramp(200)
    for seed in range(10):
        out = time_warp(window, 80, np.random.default_rng(seed))
        assert out.shape == window.shape
        assert out[0, 0] == pytest.approx(window[0, 0]) and out[-1, 0] == pytest.approx(window[-1, 0])
        assert np.all(np.diff(out[:, 0]) >= -1e-6)  # a monotone warp of a ramp stays monotone
    moved = [not np.allclose(time_warp(window, 80, np.random.default_rng(s)), window) for s in range(10)]
    assert any(moved)
    # a window too short for the warp is returned unchanged rather than failing
    tiny = _ramp(3)
    np.testing.assert_array_equal(time_warp(tiny, 80, np.random.default_rng(0)), tiny)


def test_pitch_shift_option() -> None:
    assert parse_pitch_shifts("-3,3") == (-3, 3)
    assert parse_pitch_shifts("") == ()
    with pytest.raises(ValueError, match="'x' is not a whole number"):
        parse_pitch_shifts("3,x")
    with pytest.raises(ValueError, match="non-zero"):
        parse_pitch_shifts("0")


def test_folds_are_stratified_disjoint_and_cover_everything() -> None:
    labels = {f"{g}/{i}.wav": g for g in ("a", "b", "c") for i in range(20)}
    tests = []
    for fold in range(10):
        s = fold_split(labels, fold, seed=7)
        assert not set(s.train) & set(s.val) and not set(s.train) & set(s.test) and not set(s.val) & set(s.test)
        assert len(s.train) + len(s.val) + len(s.test) == 60
        assert len(s.test) == 6 and len(s.val) == 6
        assert sorted(labels[p] for p in s.test) == ["a", "a", "b", "b", "c", "c"]
        tests.extend(s.test)
    assert sorted(tests) == sorted(labels)  # every clip is tested exactly once over 10 folds
    assert fold_split(labels, 0, seed=7) == fold_split(labels, 0, seed=7)
    assert fold_split(labels, 0, seed=7) != fold_split(labels, 0, seed=8)
    assert set(partition(labels, 7).values()) == set(range(10))


def test_too_few_clips_is_a_clear_error() -> None:
    labels = {"a/1.wav": "a", "b/1.wav": "b", "b/2.wav": "b"}
    with pytest.raises(ValueError, match="too few clips"):
        fold_split(labels, 0, seed=0)
