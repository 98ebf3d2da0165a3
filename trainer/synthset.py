"""A synthetic labelled music set: the tests' and the demo's stand-in for GTZAN.

GTZAN cannot be downloaded here, yet training must be exercised end to end, so this
writes a GTZAN-layout folder (``<out>/<label>/<label>.NNNNN.wav``) whose classes
differ the way genres do -- in tempo, timbre and tonality -- while each clip varies
in key, tempo, loudness, phase and noise so that a model has to generalise rather
than memorise one waveform.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

log = logging.getLogger(__name__)

SAMPLE_RATE = 22050


@dataclass(frozen=True)
class Style:
    """One synthetic genre."""

    name: str
    bpm: float
    harmonics: tuple[float, ...]  # amplitude of partial k+1: the timbre
    scale: tuple[int, ...]  # semitone steps used by the melody: the tonality
    root_hz: float
    decay: float  # note envelope decay per second: plucked vs sustained
    noise_hits: float  # level of a noise burst on every beat: percussion


STYLES = (
    Style("lament", bpm=66, harmonics=(1.0,), scale=(0, 3, 7, 8, 12), root_hz=220.0, decay=1.5, noise_hits=0.0),
    Style("sawdance", bpm=160, harmonics=tuple(1.0 / k for k in range(1, 13)), scale=(0, 4, 7, 11, 14), root_hz=330.0, decay=9.0, noise_hits=0.0),
    Style("clatter", bpm=112, harmonics=(1.0, 0.0, 0.33, 0.0, 0.2), scale=(0, 2, 6, 8, 10), root_hz=110.0, decay=5.0, noise_hits=0.6),
    Style("organ", bpm=90, harmonics=(1.0, 0.7, 0.5, 0.5, 0.3, 0.3), scale=(0, 3, 6, 9), root_hz=165.0, decay=0.3, noise_hits=0.15),
)


def render(style: Style, seconds: float, rng: np.random.Generator, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """One clip of ``style`` with random key, tempo, loudness and noise; mono float32 in [-1, 1]."""
    n = int(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    out = np.zeros(n, dtype=np.float64)
    beat = 60.0 / (style.bpm * rng.uniform(0.95, 1.05))
    root = style.root_hz * 2.0 ** (rng.integers(-2, 3) / 12.0)
    start = rng.uniform(0.0, beat)
    onsets = np.arange(start - beat, seconds, beat)
    for onset in onsets:
        note = root * 2.0 ** (rng.choice(style.scale) / 12.0)
        mask = t >= onset
        local = t[mask] - onset
        env = np.exp(-style.decay * local) * np.minimum(1.0, local / 0.01)
        tone = sum(a * np.sin(2 * np.pi * note * (k + 1) * local + rng.uniform(0, 2 * np.pi)) for k, a in enumerate(style.harmonics) if a)
        out[mask] += env * tone
        if style.noise_hits:
            hit = np.exp(-40.0 * local) * rng.standard_normal(local.size)
            out[mask] += style.noise_hits * hit
    out += rng.uniform(0.002, 0.01) * rng.standard_normal(n)
    peak = np.max(np.abs(out)) or 1.0
    return (out / peak * rng.uniform(0.3, 0.9)).astype(np.float32)


def make_dataset(out: str | Path, classes: int = 3, clips: int = 12, seconds: float = 3.0, seed: int = 0) -> list[Path]:
    """Write ``classes`` x ``clips`` wav files in GTZAN layout under ``out``; returns the paths."""
    if not 2 <= classes <= len(STYLES):
        raise ValueError(f"classes must be between 2 and {len(STYLES)}, got {classes}")
    if clips < 1 or seconds <= 0:
        raise ValueError(f"need clips >= 1 and seconds > 0, got clips={clips}, seconds={seconds}")
    rng = np.random.default_rng(seed)
    paths = []
    for style in STYLES[:classes]:
        folder = Path(out) / style.name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(clips):
            path = folder / f"{style.name}.{i:05d}.wav"
            sf.write(path, render(style, seconds, rng), SAMPLE_RATE, subtype="PCM_16")
            paths.append(path)
    log.info("wrote %d synthetic clips to %s", len(paths), out)
    return paths
