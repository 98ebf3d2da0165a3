"""Procedurally generated music for calibrating quantised exports.

The shipped int8 model must be reproducible from material the project may
redistribute, and no third-party recording is committed. This module makes
varied, deterministic (seeded) 30 s pieces instead: band arrangements with
drums, bass and distorted chords; swung jazz-like trios with walking bass and a
ride cymbal; drumless pads and bowed-string textures; electronic four-on-the-floor
tracks. What matters for calibration is not realism but that the activations of
the network see the spread of spectra, dynamics and rhythms that real music
produces, which a single style would not.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

SR = 22050
STYLES = ("band", "jazz", "ambient", "electronic")


def _env(n: int, attack: float, decay: float) -> np.ndarray:
    t = np.arange(n) / SR
    return np.minimum(1.0, t / max(attack, 1e-4)) * np.exp(-t / decay)


def _tone(freq: float, n: int, harmonics: int, rolloff: float, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n) / SR
    phase = rng.uniform(0, 2 * np.pi, harmonics)
    return sum(np.sin(2 * np.pi * freq * k * t + phase[k - 1]) / k**rolloff for k in range(1, harmonics + 1))


def _noise_hit(n: int, rng: np.random.Generator, decay: float, highpass: bool) -> np.ndarray:
    noise = rng.standard_normal(n)
    if highpass:
        noise = np.diff(noise, prepend=0.0)
    return noise * _env(n, 0.0005, decay)


def _kick(n: int, depth: float) -> np.ndarray:
    t = np.arange(n) / SR
    freq = 45 + depth * np.exp(-t * 30)
    return np.sin(2 * np.pi * np.cumsum(freq) / SR) * _env(n, 0.002, 0.15)


def _place(out: np.ndarray, pos: int, sound: np.ndarray) -> None:
    end = min(out.size, pos + sound.size)
    if pos < end:
        out[pos:end] += sound[: end - pos]


def _scale_freqs(root: float, minor: bool) -> np.ndarray:
    steps = [0, 2, 3, 5, 7, 8, 10] if minor else [0, 2, 4, 5, 7, 9, 11]
    return root * 2.0 ** (np.array(steps) / 12.0)


def _band(n: int, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros(n)
    beat = int(60 / rng.uniform(80, 180) * SR)
    root = rng.uniform(70, 130)
    scale = _scale_freqs(root, bool(rng.integers(2)))
    drive = rng.uniform(0.5, 4.0)
    for b in range(n // beat + 1):
        pos = b * beat
        _place(out, pos, (0.9 if b % 2 == 0 else 0.5) * (_kick(beat, 90) if b % 2 == 0 else _noise_hit(beat, rng, 0.09, False)))
        for h in range(2):
            _place(out, pos + h * beat // 2, 0.12 * _noise_hit(beat // 2, rng, 0.02, True))
        note = scale[rng.integers(len(scale))]
        _place(out, pos, 0.3 * _tone(note / 2, beat, 3, 1.0, rng) * _env(beat, 0.003, 0.25))
        if b % 4 == 0:
            chord = sum(_tone(note * r, 4 * beat, 10, 1.0, rng) for r in (1.0, 1.5, 2.0))
            _place(out, pos, 0.1 * np.tanh(drive * chord) * _env(4 * beat, 0.005, rng.uniform(0.3, 2.0)))
    return out


def _jazz(n: int, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros(n)
    beat = int(60 / rng.uniform(90, 240) * SR)
    swing = rng.uniform(0.55, 0.7)
    scale = _scale_freqs(rng.uniform(90, 150), bool(rng.integers(2)))
    bass_idx = 0
    for b in range(n // beat + 1):
        pos = b * beat
        bass_idx = (bass_idx + rng.choice([-2, -1, 1, 2])) % len(scale)
        _place(out, pos, 0.35 * _tone(scale[bass_idx] / 2, beat, 4, 1.5, rng) * _env(beat, 0.01, 0.4))
        _place(out, pos, 0.1 * _noise_hit(beat, rng, 0.25, True))  # ride
        _place(out, pos + int(swing * beat), 0.06 * _noise_hit(beat // 2, rng, 0.1, True))
        if rng.random() < 0.6:  # piano comping / melody
            for _ in range(rng.integers(1, 4)):
                note = scale[rng.integers(len(scale))] * 2 ** rng.integers(1, 3)
                at = pos + int(rng.choice([0, swing]) * beat)
                _place(out, at, 0.08 * _tone(note, 2 * beat, 8, 1.3, rng) * _env(2 * beat, 0.004, 0.5))
    return out


def _ambient(n: int, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros(n)
    scale = _scale_freqs(rng.uniform(60, 200), bool(rng.integers(2)))
    t = np.arange(n) / SR
    pos = 0
    while pos < n:
        length = int(rng.uniform(1.0, 6.0) * SR)
        seg = min(length, n - pos)
        for _ in range(rng.integers(1, 4)):
            f0 = scale[rng.integers(len(scale))] * 2 ** rng.integers(0, 3)
            vib = 1 + 0.004 * np.sin(2 * np.pi * rng.uniform(4, 7) * t[:seg])
            wave = sum(np.sin(2 * np.pi * np.cumsum(f0 * k * vib) / SR) / k ** rng.uniform(1.0, 2.5) for k in range(1, 7))
            fade = np.minimum(1.0, np.minimum(np.arange(seg), seg - np.arange(seg)) / (0.2 * SR))
            out[pos : pos + seg] += 0.2 * wave * fade
        pos += length
    return out + 0.003 * rng.standard_normal(n)


def _electronic(n: int, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros(n)
    beat = int(60 / rng.uniform(110, 150) * SR)
    root = rng.uniform(40, 70)
    cutoff = rng.uniform(0.05, 0.4)
    for b in range(n // beat + 1):
        pos = b * beat
        _place(out, pos, 1.0 * _kick(beat, 120))
        _place(out, pos + beat // 2, 0.2 * _noise_hit(beat // 2, rng, 0.04, True))
        if b % 2:
            _place(out, pos, 0.4 * _noise_hit(beat, rng, 0.15, False))
        saw = _tone(root * rng.choice([1, 1.5, 2]), beat // 2, 20, 1.0, rng)
        # one-pole low-pass for a synth-bass timbre
        y = np.empty_like(saw)
        acc = 0.0
        for i, v in enumerate(saw):
            acc += cutoff * (v - acc)
            y[i] = acc
        _place(out, pos + beat // 2, 0.5 * y * _env(beat // 2, 0.002, 0.15))
    return out


_GENERATORS: dict[str, Callable[[int, np.random.Generator], np.ndarray]] = {
    "band": _band,
    "jazz": _jazz,
    "ambient": _ambient,
    "electronic": _electronic,
}


def synth_piece(seed: int, seconds: float = 30.0, style: str | None = None) -> np.ndarray:
    """One deterministic piece (mono float32 at 22050 Hz, peak 0.8); the style cycles with the seed."""
    rng = np.random.default_rng(seed)
    style = style or STYLES[seed % len(STYLES)]
    if style not in _GENERATORS:
        raise ValueError(f"unknown synth style {style!r}; choose one of {', '.join(STYLES)}")
    out = _GENERATORS[style](int(seconds * SR), rng)
    peak = float(np.max(np.abs(out))) or 1.0
    return (0.8 * out / peak).astype(np.float32)
