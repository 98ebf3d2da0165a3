"""Whole-track analysis: decode once, mel once, classify 30 s windows with a hop.

Used by ``classify``, the watch source and the library scanner, so a file gets the
same answer whichever feature looks at it.

* A track shorter than one window is looped to 30 s (``frontend.loop_to_length``)
  and classified as a single window spanning the whole track.
* A longer track is cut into windows every ``hop`` seconds; when the last hop does
  not reach the end, one more window aligned to the end is added so the ending is
  heard too. The track result is the mean of the window probabilities.

Windows are normalised as the model names (``audio.normalization.StreamNormalizer``):
``SEED`` normalises each window on its own; ``RUNNING`` normalises the track's frames
once, as a stream, and the windows are slices of those, so every window equals
``running_normalize(all frames)[start : start + 647]``.

The file is decoded block by block (``audio.iter_audio``) and its mel frames are
computed as a stream that ends exactly like the batch computation would
(``StreamingMel.finish``); windows are cut as soon as their frames exist and only
the last window's worth of frames is kept (``RUNNING`` holds the first window's
frames until it is complete), so memory does not grow with the track's length.
The window grid is in frames (1024 samples), not exact seconds.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..audio.decode import iter_audio
from ..audio.frontend import MelFrontend, StreamingMel, loop_to_length
from ..audio.normalization import StreamNormalizer, window_of
from ..audio.sanitize import SILENCE_DBFS, dbfs
from ..model.calibration import UncertaintyRule
from ..model.engine import Engine
from ..model.info import NORMALIZATION
from ..model.musicgate import MusicGate
from ..sinks.messages import State, verdict
from . import TRACK_HOP_SECONDS


@dataclass
class WindowResult:
    start: float
    end: float
    probabilities: np.ndarray
    not_music: float | None = None  # P(not music) where the model carries a gate


@dataclass
class TrackResult:
    duration: float
    probabilities: np.ndarray  # mean over windows
    embedding: np.ndarray  # mean over windows, (32,)
    labels: list[str]
    model: str
    windows: list[WindowResult] = field(default_factory=list)
    precision: str = "fp32"  # of the export used (fp32 / int8 / fp16), so answers say which export gave them
    level_dbfs: float = 0.0  # RMS level of the whole track
    gate: MusicGate | None = None  # the model's music gate, if it carries one

    @property
    def not_music(self) -> float | None:
        """Mean P(not music) over the windows (None without a gate)."""
        scores = [w.not_music for w in self.windows if w.not_music is not None]
        return float(np.mean(scores)) if scores and self.gate is not None else None

    def state(self, uncertainty: UncertaintyRule, silence_dbfs: float = SILENCE_DBFS) -> State:
        """The daemon's rules (``messages.verdict``) on the whole track: its level, its mean P(not music)
        and its mean probabilities."""
        score = self.not_music
        return verdict(silent=self.level_dbfs < silence_dbfs,
                       not_music=self.gate is not None and score is not None and self.gate.is_not_music(score),
                       uncertain=uncertainty.is_uncertain(self.probabilities))

    def verdict(self, uncertainty: UncertaintyRule, silence_dbfs: float = SILENCE_DBFS) -> tuple[State, str | None]:
        """(state, genre) as every payload reports a track: the genre is null for silence and not_music, as in
        the daemon's states, and the best guess even when uncertain, so readers of "genre" alone see no change."""
        state = self.state(uncertainty, silence_dbfs)
        return state, state.genre(self.genre)

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


class _WindowCutter:
    """Cut normalised windows out of a stream of mel power frames, on the ``window_starts`` grid.

    The frames go through the model's normaliser first and windows are cut from what it
    returns. Holds only the frames a window still to come can need: at most one window plus
    the frames of the latest push (and the normaliser's own: ``RUNNING``'s first window).
    Frames the normaliser still holds at the end belong to a stream shorter than a window,
    from which no window is cut.
    """

    def __init__(self, window_frames: int, hop_frames: int, normalizer: StreamNormalizer) -> None:
        self.window = window_frames
        self.hop = max(1, hop_frames)
        self.normalizer = normalizer
        self._frames = np.zeros((0, 0), dtype=np.float32)
        self._base = 0  # absolute index of self._frames[0]
        self._next = 0  # next start on the hop grid
        self._last_cut = -1

    @property
    def total(self) -> int:
        return self._base + self._frames.shape[0]

    def push(self, power: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        frames = self.normalizer.push(power)
        if frames.shape[0] == 0:
            return
        self._frames = np.concatenate([self._frames, frames]) if self._frames.size else frames
        while self._next + self.window <= self.total:
            yield self._cut(self._next)
            self._next += self.hop
        keep_from = min(self._next, self.total - self.window)
        if keep_from > self._base:
            self._frames = self._frames[keep_from - self._base :]
            self._base = keep_from

    def finish(self) -> Iterator[tuple[int, np.ndarray]]:
        """The window aligned to the end, when the hop grid did not land on it."""
        last = self.total - self.window
        if last >= 0 and last != self._last_cut:
            yield self._cut(last)

    def _cut(self, start: int) -> tuple[int, np.ndarray]:
        self._last_cut = start
        i = start - self._base
        return start, self.normalizer.window(self._frames[i : i + self.window])


def clip_window(audio: np.ndarray, frontend: MelFrontend, normalization: str = NORMALIZATION) -> np.ndarray:
    """The model input of a clip of at most one window: looped to 30 s, its first window normalised as a stream of its own."""
    c = frontend.config
    power = frontend.power(loop_to_length(np.asarray(audio, dtype=np.float32), c.window_samples))[: c.window_frames]
    return window_of(normalization, power, c.top_db)


def iter_windows(
    blocks: Iterable[np.ndarray], frontend: MelFrontend, hop_seconds: float = TRACK_HOP_SECONDS,
    normalization: str = NORMALIZATION,
) -> Iterator[tuple[float, float, np.ndarray]]:
    """Yield (start_s, end_s, normalised window) for a track given as blocks of samples.

    ``normalization`` is the model's (``engine.info.normalization``); its default is the one a
    model that names none has (``model.info``), for callers that cut windows without a model.
    The end of the last window is capped at the track's duration, which is only known
    once the blocks run out, so ends are nominal (start + 30 s) until then.
    """
    c = frontend.config
    mel = StreamingMel(frontend)
    cutter = _WindowCutter(c.window_frames, c.seconds_to_frames(hop_seconds), StreamNormalizer(normalization, c.window_frames, c.top_db))
    head: list[np.ndarray] | None = []  # the audio while it is shorter than a window (looped below)
    total = 0
    for block in blocks:
        total += block.size
        if head is not None:
            head.append(block)
            if total >= c.window_samples:
                head = None
        for start, window in cutter.push(mel.push(block)):
            yield c.frames_to_seconds(start), c.frames_to_seconds(start) + c.window_seconds, window
    duration = total / c.sample_rate
    tail = mel.finish()
    if head is not None:  # shorter than one window: one looped window spanning the track
        yield 0.0, duration, clip_window(np.concatenate(head), frontend, normalization)
        return
    for start, window in [*cutter.push(tail), *cutter.finish()]:
        s = c.frames_to_seconds(start)
        yield s, min(duration, s + c.window_seconds), window


def analyse_blocks(
    blocks: Iterable[np.ndarray],
    engine: Engine,
    frontend: MelFrontend | None = None,
    hop_seconds: float = TRACK_HOP_SECONDS,
) -> TrackResult:
    """Classify a track given as blocks of samples; windows go to the engine in batches."""
    frontend = frontend or MelFrontend(engine.info.frontend)
    sr = frontend.config.sample_rate
    total = 0
    results: list[WindowResult] = []
    embeddings: list[np.ndarray] = []
    batch: list[tuple[float, float, np.ndarray]] = []

    energy = 0.0  # sum of squares, for the track's level

    def counted(source: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        nonlocal total, energy
        for block in source:
            total += block.size
            energy += float(np.dot(block.astype(np.float64), block.astype(np.float64)))
            yield block

    def flush() -> None:
        pred = engine.predict(np.stack([w for _, _, w in batch]))
        gate = pred.not_music if pred.not_music is not None else [None] * len(batch)
        for (start, end, _), p, g in zip(batch, pred.probabilities, gate):
            results.append(WindowResult(start, end, p, None if g is None else float(g)))
        embeddings.append(pred.embeddings)
        batch.clear()

    for item in iter_windows(counted(blocks), frontend, hop_seconds, engine.info.normalization):
        batch.append(item)
        if len(batch) >= engine.batch_size:
            flush()
    if batch:
        flush()
    duration = total / sr
    for r in results:
        r.end = min(r.end, duration)
    probs = np.mean([r.probabilities for r in results], axis=0)
    emb = np.concatenate(embeddings).mean(axis=0)
    return TrackResult(duration, probs, emb, list(engine.labels), engine.model_id, results, engine.precision,
                       dbfs(energy / total) if total else -math.inf, engine.info.gate)


def analyse_audio(
    audio: np.ndarray,
    engine: Engine,
    frontend: MelFrontend | None = None,
    hop_seconds: float = TRACK_HOP_SECONDS,
) -> TrackResult:
    """Classify a track already decoded to one array."""
    return analyse_blocks([np.asarray(audio, dtype=np.float32)], engine, frontend, hop_seconds)


class Cancelled(Exception):
    """``stop`` was set while a file was analysed: no result (the daemon is stopping)."""


def _until(stop: threading.Event | None, blocks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    for block in blocks:
        if stop is not None and stop.is_set():
            raise Cancelled
        yield block


def analyse_file(path: str | Path, engine: Engine, hop_seconds: float = TRACK_HOP_SECONDS,
                 stop: threading.Event | None = None) -> TrackResult:
    """Decode (block by block) and classify one file; raises ``audio.AudioError`` for unusable files.

    ``stop`` is checked between blocks (about a second of work each), so a daemon told to stop in the
    middle of a long file ends within its stop timeout instead of being killed inside onnxruntime;
    it raises ``Cancelled``."""
    frontend = MelFrontend(engine.info.frontend)
    return analyse_blocks(_until(stop, iter_audio(path, frontend.config.sample_rate)), engine, frontend, hop_seconds)
