"""Helpers for the source tests: run a source in a thread and wait for what it emits."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import soundfile as sf

from genre_stream.sources.base import AudioChunk, Source, SourceItem, SourceProblem, TrackReady


class Collector:
    """Thread-safe sink for ``emit`` with a blocking ``wait_for``."""

    def __init__(self, on_item: Callable[[SourceItem], None] | None = None) -> None:
        self.items: list[SourceItem] = []
        self._cond = threading.Condition()
        self._on_item = on_item

    def __call__(self, item: SourceItem) -> None:
        if self._on_item is not None:
            self._on_item(item)
        with self._cond:
            self.items.append(item)
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[list[SourceItem]], bool], timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.items):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def of(self, kind: type) -> list:
        with self._cond:
            return [i for i in self.items if isinstance(i, kind)]

    def chunks(self) -> list[AudioChunk]:
        return self.of(AudioChunk)

    def tracks(self) -> list[TrackReady]:
        return self.of(TrackReady)

    def problems(self) -> list[SourceProblem]:
        return self.of(SourceProblem)

    def audio(self) -> np.ndarray:
        chunks = self.chunks()
        return np.concatenate([c.samples for c in chunks]) if chunks else np.zeros(0, np.float32)


@contextlib.contextmanager
def running(source: Source, collector: Collector) -> Iterator[threading.Thread]:
    """Run ``source`` in a thread for the duration of the block; stop it and require that it returns."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            source.run(collector, stop)
        except BaseException as exc:  # surfaced to the test below
            errors.append(exc)

    thread = threading.Thread(target=target, name=f"source-{source.id}", daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        stop.set()
        thread.join(timeout=15)
    assert not thread.is_alive(), f"source {source.id} did not return after stop was set"
    assert not errors, f"source {source.id} raised {errors[0]!r}"


def write_tone(path: Path, seconds: float, freq: float = 440.0, sr: int = 22050, amplitude: float = 0.5, fmt: str | None = None) -> np.ndarray:
    """A sine wav (or another libsndfile format); returns the samples written."""
    t = np.arange(int(seconds * sr)) / sr
    audio = (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    sf.write(str(path), audio, sr, format=fmt)
    return audio


def dominant_frequency(audio: np.ndarray, sr: int = 22050) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(audio.size)))
    return float(np.argmax(spectrum) * sr / audio.size)
