"""Test libraries with known groups: synthetic styles, and variants of the shared real clips.

The bundled model is GTZAN-trained, so a group is only "known" if the model hears
its members alike: the synthetic styles are noise hits with a long decay (heard
as blues), a sine kick drum (hiphop) and a sawtooth (jazz); the real groups
are gain, speed (resampling: tempo and pitch together) and segment variants of one
clip each. Clips are 3.5-4 s so each costs one 30 s window.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 22050
SECONDS = 3.5


def _t(seconds: float = SECONDS) -> np.ndarray:
    return np.arange(int(seconds * SR)) / SR


def noise_hits(rng: np.random.Generator) -> np.ndarray:
    """Noise bursts with a long decay on a ~120 bpm grid."""
    n = int(SECONDS * SR)
    x = np.zeros(n)
    step = int(SR * 60 / rng.uniform(110, 130))
    hit = 2000
    decay = rng.uniform(500, 800)
    for k in range(0, n - hit, step):
        x[k : k + hit] += rng.standard_normal(hit) * np.exp(-np.arange(hit) / decay)
    return 0.5 * x


def kick_drum(rng: np.random.Generator) -> np.ndarray:
    """A pitch-swept sine kick at 90-110 bpm."""
    n = int(SECONDS * SR)
    x = np.zeros(n)
    step = int(SR * 60 / rng.uniform(90, 110))
    tt = np.arange(4000) / SR
    kick = np.sin(2 * np.pi * (50 + 100 * np.exp(-tt * 30)) * tt) * np.exp(-tt * 8)
    for k in range(0, n - kick.size, step):
        x[k : k + kick.size] += kick
    return 0.6 * x


def sawtooth(rng: np.random.Generator) -> np.ndarray:
    """A steady sawtooth at 100-200 Hz."""
    t = _t()
    f0 = rng.uniform(100, 200)
    return 0.3 * (2 * ((f0 * t) % 1) - 1)


SYNTHETIC_STYLES: dict[str, Callable[[np.random.Generator], np.ndarray]] = {
    "hits": noise_hits,
    "kick": kick_drum,
    "saw": sawtooth,
}


def write_wav(path: Path, audio: np.ndarray, sr: int = SR) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.asarray(audio, dtype=np.float32), sr, subtype="PCM_16")
    return path


def synthetic_library(root: Path, per_group: int = 4, seed: int = 0) -> dict[Path, str]:
    """Write ``per_group`` clips of each synthetic style under ``root/<style>/``; path -> group."""
    rng = np.random.default_rng(seed)
    truth: dict[Path, str] = {}
    for style, make in SYNTHETIC_STYLES.items():
        for i in range(per_group):
            truth[write_wav(root / style / f"{style}-{i}.wav", make(rng))] = style
    return truth


def _speed(audio: np.ndarray, factor: float) -> np.ndarray:
    """Play ``factor`` times faster (pitch follows), by resampling."""
    from genre_stream.audio.resample import resample

    return resample(audio.astype(np.float32), int(round(SR * factor)), SR)


# (clip, [(start s, gain, speed)]) per group: variants the bundled model keeps in one genre
REAL_GROUPS: dict[str, tuple[str, list[tuple[float, float, float]]]] = {
    "country": ("gtzan-country.00000.wav", [(0.0, 1.0, 1.0), (8.0, 0.5, 1.0), (16.0, 1.0, 1.06), (22.0, 0.8, 0.94)]),
    "jazz": ("jtd-jazz-trio-5s.wav", [(0.0, 1.0, 1.0), (1.0, 0.5, 1.0), (0.5, 1.0, 1.06), (0.8, 0.8, 0.94)]),
    "rock": ("seed-example-rock.mp3", [(0.0, 1.0, 1.0), (4.0, 0.5, 1.0), (2.0, 1.0, 1.06), (1.0, 0.8, 0.94)]),
}


def real_library(root: Path, shared_audio: Path) -> dict[Path, str]:
    """Write 4 s variants of the shared real clips under ``root/<group>/``; path -> group."""
    from genre_stream.audio.decode import load_audio

    truth: dict[Path, str] = {}
    for group, (clip, variants) in REAL_GROUPS.items():
        audio = load_audio(shared_audio / clip, SR)
        for i, (start, gain, speed) in enumerate(variants):
            seg = audio[int(start * SR) : int((start + 4.0) * SR)]
            truth[write_wav(root / group / f"{group}-{i}.wav", gain * _speed(seg, speed))] = group
    return truth
