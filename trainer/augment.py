"""The seed's augmentation: SpecAugment on the fly, pitch-shifted audio copies at prepare time.

SpecAugment (Park et al. 2019) as the seed used it on normalised mel windows:
one frequency mask of up to F=27 bands, one time mask of up to T=100 frames and a
time warp of up to W=80 frames. Masked cells get the value of silence (1.0, the
-80 dB floor), so a mask reads as "nothing here" rather than as the loudest possible
sound (0.0). Both normalisations a model may name (genre_stream.audio.normalization)
put their values in [0, 1] with 0 at the reference and 1 at the floor (seed: the
window's quietest bin, 80 dB down once its range reaches 80 dB; running: 80 dB or
more below the running reference), so the mask value and the warp's interpolation
between frames mean the same under either.

Short training windows cannot hold a 100-frame mask or an 80-frame warp, so both are
capped relative to the window (a mask at most half of it, a warp that keeps the
warp point inside it); at the default 647 frames the seed's values apply unchanged.

Randomness comes only from the ``numpy.random.Generator`` passed in, which the
trainer derives from (seed, epoch, batch), so a run is reproducible and a resumed
run sees the same augmentations as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SILENCE = 1.0  # value of the -top_db floor under either normalisation


@dataclass(frozen=True)
class SpecAugmentConfig:
    freq_mask: int = 27
    time_mask: int = 100
    time_warp: int = 80

    @property
    def enabled(self) -> bool:
        return bool(self.freq_mask or self.time_mask or self.time_warp)


def time_warp(window: np.ndarray, max_shift: int, rng: np.random.Generator) -> np.ndarray:
    """Move a random point in time by up to ``max_shift`` frames, stretching one side and squeezing the other."""
    n = window.shape[0]
    limit = min(max_shift, n // 2 - 1)
    if limit < 1:
        return window
    centre = int(rng.integers(limit, n - limit))
    shift = int(rng.integers(-limit, limit + 1))
    target = centre + shift
    if shift == 0:
        return window
    # For each output frame, the (fractional) source frame: piecewise linear through
    # (0 -> 0), (target -> centre), (n-1 -> n-1).
    out_t = np.arange(n, dtype=np.float64)
    src = np.where(
        out_t <= target,
        out_t * centre / max(target, 1),
        centre + (out_t - target) * (n - 1 - centre) / max(n - 1 - target, 1),
    )
    lo = np.clip(np.floor(src).astype(int), 0, n - 1)
    hi = np.clip(lo + 1, 0, n - 1)
    frac = (src - lo)[:, None].astype(np.float32)
    return (window[lo] * (1.0 - frac) + window[hi] * frac).astype(np.float32)


def spec_augment(window: np.ndarray, config: SpecAugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Augmented copy of one normalised window (T, n_mels)."""
    out = np.array(window, dtype=np.float32, copy=True)
    n_time, n_mels = out.shape
    if config.time_warp:
        out = time_warp(out, config.time_warp, rng)
    if config.freq_mask:
        width = int(rng.integers(0, min(config.freq_mask, n_mels // 2) + 1))
        start = int(rng.integers(0, n_mels - width + 1))
        out[:, start : start + width] = SILENCE
    if config.time_mask:
        width = int(rng.integers(0, min(config.time_mask, n_time // 2) + 1))
        start = int(rng.integers(0, n_time - width + 1))
        out[start : start + width, :] = SILENCE
    return out


def pitch_shift(audio: np.ndarray, sample_rate: int, semitones: int) -> np.ndarray:
    """The audio shifted by ``semitones`` at the same length (librosa's phase vocoder + resampling)."""
    import librosa

    return librosa.effects.pitch_shift(np.asarray(audio, dtype=np.float32), sr=sample_rate, n_steps=float(semitones)).astype(np.float32)


def parse_pitch_shifts(text: str) -> tuple[int, ...]:
    """'-3,3' -> (-3, 3); a clear error for anything else."""
    if not text.strip():
        return ()
    out = []
    for part in text.split(","):
        try:
            value = int(part.strip())
        except ValueError:
            raise ValueError(f"pitch shift {part.strip()!r} is not a whole number of semitones") from None
        if value == 0 or abs(value) > 12:
            raise ValueError(f"pitch shift {value} must be a non-zero number of semitones within +/-12")
        out.append(value)
    return tuple(sorted(set(out)))
