"""Whole-track analysis: decode once, mel once, classify 30 s windows with a hop.

Used by ``classify``, the watch source and the library scanner, so a file gets the
same answer whichever feature looks at it.

* A track shorter than one window is looped to 30 s (``frontend.loop_to_length``)
  and classified as a single window spanning the whole track.
* A longer track is cut into windows every ``hop`` seconds; when the last hop does
  not reach the end, one more window aligned to the end is added so the ending is
  heard too. The track result is the mean of the window probabilities.

Mel frames are computed once for the whole track and windows are sliced from them,
which is why the window grid is in frames (1024 samples), not exact seconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .audio import load_audio
from .engine import Engine
from .frontend import MelFrontend, loop_to_length, normalize_window
from .sanitize import repair_file

DEFAULT_HOP_SECONDS = 10.0


@dataclass
class WindowResult:
    start: float
    end: float
    probabilities: np.ndarray


@dataclass
class TrackResult:
    duration: float
    probabilities: np.ndarray  # mean over windows
    embedding: np.ndarray  # mean over windows, (32,)
    labels: list[str]
    model: str
    windows: list[WindowResult] = field(default_factory=list)

    @property
    def genre(self) -> str:
        return self.labels[int(np.argmax(self.probabilities))]

    @property
    def confidence(self) -> float:
        return float(np.max(self.probabilities))

    def top(self, k: int = 3) -> list[tuple[str, float]]:
        order = np.argsort(self.probabilities)[::-1][:k]
        return [(self.labels[i], float(self.probabilities[i])) for i in order]


def window_starts(n_frames: int, window_frames: int, hop_frames: int) -> list[int]:
    """Start frames of the windows covering ``n_frames`` frames (n_frames >= window_frames)."""
    last = n_frames - window_frames
    starts = list(range(0, last + 1, max(1, hop_frames)))
    if starts[-1] != last:
        starts.append(last)
    return starts


def iter_windows(
    audio: np.ndarray, frontend: MelFrontend, hop_seconds: float = DEFAULT_HOP_SECONDS
) -> Iterator[tuple[float, float, np.ndarray]]:
    """Yield (start_s, end_s, normalised window) for a decoded track."""
    c = frontend.config
    duration = audio.size / c.sample_rate
    if audio.size < c.window_samples:
        yield 0.0, duration, frontend.window(loop_to_length(audio, c.window_samples))
        return
    power = frontend.power(audio)
    hop_frames = max(1, c.seconds_to_frames(hop_seconds))
    for s in window_starts(power.shape[0], c.window_frames, hop_frames):
        start = c.frames_to_seconds(s)
        end = min(duration, start + c.window_seconds)
        yield start, end, normalize_window(power[s : s + c.window_frames], c.top_db)


def analyse_audio(
    audio: np.ndarray,
    engine: Engine,
    frontend: MelFrontend | None = None,
    hop_seconds: float = DEFAULT_HOP_SECONDS,
) -> TrackResult:
    """Classify a decoded track; windows go to the engine in batches to bound memory."""
    frontend = frontend or MelFrontend(engine.info.frontend)
    duration = audio.size / frontend.config.sample_rate
    results: list[WindowResult] = []
    embeddings: list[np.ndarray] = []
    batch: list[tuple[float, float, np.ndarray]] = []

    def flush() -> None:
        pred = engine.predict(np.stack([w for _, _, w in batch]))
        for (start, end, _), p in zip(batch, pred.probabilities):
            results.append(WindowResult(start, end, p))
        embeddings.append(pred.embeddings)
        batch.clear()

    for item in iter_windows(audio, frontend, hop_seconds):
        batch.append(item)
        if len(batch) >= engine.batch_size:
            flush()
    if batch:
        flush()
    probs = np.mean([r.probabilities for r in results], axis=0)
    emb = np.concatenate(embeddings).mean(axis=0)
    return TrackResult(duration, probs, emb, list(engine.labels), engine.model_id, results)


def analyse_file(path: str | Path, engine: Engine, hop_seconds: float = DEFAULT_HOP_SECONDS) -> TrackResult:
    """Decode and classify one file; raises ``audio.AudioError`` for unusable files."""
    frontend = MelFrontend(engine.info.frontend)
    audio = repair_file(load_audio(path, frontend.config.sample_rate), path)
    return analyse_audio(audio, engine, frontend, hop_seconds)
