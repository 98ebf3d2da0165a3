"""How often non-music (speech, white and pink noise, pure tones) is called "uncertain" vs a confident genre.

    PYTHONPATH=. python scripts/measure_nonmusic.py [--model fp32 --model int8] [--keep DIR]

The signals are made here, reproducibly: speech with espeak-ng (six texts, six
voices, 30 s or so each; skipped with a note when espeak-ng is not installed),
six white and six pink noises at different levels (seeded) and six sine tones
from 110 to 3520 Hz, all 30 s at 22050 Hz. Each is classified like
``genre-stream classify`` does, and judged by each model's own uncertain rule.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from genre_stream.model.calibration import UncertaintyRule  # noqa: E402
from genre_stream.model.engine import Engine  # noqa: E402
from genre_stream.model.choice import open_engine
from genre_stream.tracks.analysis import analyse_file  # noqa: E402

SR = 22050
SECONDS = 30
TEXTS = [
    "The quick brown fox jumps over the lazy dog. " * 6,
    "Good evening, here is the news. The weather tomorrow will be cloudy with some rain in the north and sunshine in the south. " * 3,
    "Please remember to switch off the lights when you leave the room, and close all the windows before the weekend. " * 3,
    "One two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen. " * 4,
    "Welcome to the podcast. Today we talk about gardening, tomatoes, and how to keep slugs away from your lettuce. " * 3,
    "Ladies and gentlemen, the train now arriving at platform four is the delayed service to the airport. " * 3,
]
VOICES = ["en", "en-us", "de", "fr", "en+f3", "es"]


def _save(folder: Path, name: str, x: np.ndarray) -> None:
    sf.write(folder / f"{name}.wav", (x / max(1e-9, float(np.abs(x).max())) * 0.5).astype(np.float32), SR)


def make_signals(folder: Path) -> list[str]:
    """Write the signals into ``folder``; returns notes about anything left out."""
    notes = []
    espeak = shutil.which("espeak-ng")
    if espeak:
        for i, (text, voice) in enumerate(zip(TEXTS, VOICES)):
            subprocess.run([espeak, "-v", voice, "-s", str(150 + 10 * i), "-w", str(folder / f"speech-{i}.wav"), text], check=True)
    else:
        notes.append("espeak-ng not installed: no speech signals")
    rng = np.random.default_rng(1234)
    n = SR * SECONDS
    freqs = np.fft.rfftfreq(n)
    freqs[0] = freqs[1]
    for i in range(6):
        _save(folder, f"white-{i}", rng.standard_normal(n) * (0.1 + 0.15 * i))
        _save(folder, f"pink-{i}", np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) / np.sqrt(freqs), n))
    t = np.arange(n) / SR
    for i, hz in enumerate([110, 220, 440, 880, 1760, 3520]):
        _save(folder, f"tone-{i}", np.sin(2 * np.pi * hz * t))
    return notes


def measure(engine: Engine, raw: Engine, folder: Path) -> dict[str, dict]:
    """Per kind: how many signals are uncertain, the genres of the others, calibrated and raw top probabilities."""
    rule = UncertaintyRule.for_model(engine.info.calibration)
    by_kind: dict[str, dict] = {}
    for path in sorted(folder.glob("*.wav")):
        kind = path.stem.split("-")[0]
        r = analyse_file(path, engine)
        row = by_kind.setdefault(kind, {"signals": 0, "uncertain": 0, "confident_genres": Counter(), "confidences": [], "raw_confidences": []})
        row["signals"] += 1
        row["confidences"].append(round(r.confidence, 3))
        row["raw_confidences"].append(round(analyse_file(path, raw).confidence, 3))
        if rule.is_uncertain(r.probabilities):
            row["uncertain"] += 1
        else:
            row["confident_genres"][r.genre] += 1
    for row in by_kind.values():
        row["confident_genres"] = dict(row["confident_genres"])
    return by_kind


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", default=None, help="ONNX file or fp32 / int8 (repeatable; default both)")
    parser.add_argument("--keep", type=Path, default=None, help="write the signals here instead of a temporary folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nonmusic-") as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        out: dict[str, object] = {"notes": make_signals(folder)}
        for spec in args.model or ["fp32", "int8"]:
            engine = open_engine(spec, device="cpu", threads=1)
            raw = open_engine(spec, device="cpu", threads=1)
            raw.info = replace(raw.info, calibration=None)  # what the model said before calibration
            out[spec] = measure(engine, raw, folder)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
