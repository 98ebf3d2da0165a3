"""Generate examples/demo.wav: a short synthetic band (drums, bass, guitar-like chords).

The project ships no third-party recordings, so the demo clip is made from
scratch by this script and is free to redistribute. It is deterministic: the same
script always writes the same file.

    python examples/make_demo.py [--out examples/demo.wav] [--seconds 12]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 22050


def _env(n: int, attack: float, decay: float) -> np.ndarray:
    t = np.arange(n) / SR
    return np.minimum(1.0, t / attack) * np.exp(-t / decay)


def _kick(n: int) -> np.ndarray:
    t = np.arange(n) / SR
    freq = 50 + 90 * np.exp(-t * 30)
    return np.sin(2 * np.pi * np.cumsum(freq) / SR) * _env(n, 0.002, 0.12)


def _snare(n: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n) / SR
    return (0.6 * rng.standard_normal(n) + 0.4 * np.sin(2 * np.pi * 190 * t)) * _env(n, 0.001, 0.08)


def _hat(n: int, rng: np.random.Generator) -> np.ndarray:
    noise = rng.standard_normal(n)
    noise = np.diff(noise, prepend=0.0)  # crude high-pass
    return noise * _env(n, 0.0005, 0.02)


def _pluck(freq: float, n: int) -> np.ndarray:
    """A distorted, harmonically rich chord tone (sawtooth through tanh)."""
    t = np.arange(n) / SR
    saw = sum(np.sin(2 * np.pi * freq * k * t) / k for k in range(1, 12))
    return np.tanh(2.5 * saw) * _env(n, 0.005, 0.35)


def make_demo(seconds: float = 12.0, bpm: float = 124.0, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    total = int(seconds * SR)
    out = np.zeros(total + SR)
    beat = int(60 / bpm * SR)
    eighth = beat // 2
    # I - bVII - IV - I in E, a rock progression
    roots = [82.41, 73.42, 110.0, 82.41]
    n_beats = total // beat
    for b in range(n_beats):
        pos = b * beat
        bar, step = divmod(b, 4)
        root = roots[bar % len(roots)]
        if step in (0, 2):
            out[pos : pos + beat] += 0.9 * _kick(beat)
        else:
            out[pos : pos + beat] += 0.5 * _snare(beat, rng)
        for h in (0, eighth):
            out[pos + h : pos + h + eighth] += 0.15 * _hat(eighth, rng)
        for h in (0, eighth):  # driving eighth-note bass
            t = np.arange(eighth) / SR
            out[pos + h : pos + h + eighth] += 0.35 * np.sin(2 * np.pi * root * t) * _env(eighth, 0.003, 0.2)
        if step == 0:  # power chord on each bar
            chord = sum(_pluck(root * 2 * r, 4 * beat) for r in (1.0, 1.5, 2.0))
            out[pos : pos + 4 * beat] += 0.12 * chord
    out = out[:total]
    return (0.8 * out / np.max(np.abs(out))).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("demo.wav"))
    parser.add_argument("--seconds", type=float, default=12.0)
    args = parser.parse_args()
    sf.write(args.out, make_demo(args.seconds), SR, subtype="PCM_16")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
