"""What every source emits, the ``Source`` contract, and helpers the live sources share.

A source turns some outside thing (a sound card, a folder, a file, a network
stream) into ``SourceItem`` values. The daemon runs each source's ``run`` in its
own thread and routes the items: audio chunks to a ``SourcePipeline``, complete
files to a ``tagging.TrackTagger``, problems to the error events. Sources never
raise for faults that can heal (a device unplugged, a stream dropped, a corrupt
file); they report them as ``SourceProblem`` and carry on.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..audio.frontend import SAMPLE_RATE

log = logging.getLogger(__name__)



@dataclass(frozen=True, eq=False)  # eq=False: numpy arrays have no single truth value
class AudioChunk:
    """A piece of mono float32 audio at ``SAMPLE_RATE`` from a live or file source."""

    source: str
    samples: np.ndarray
    time: float  # stream time (s) of the first sample, counted from the source's start
    captured_at: float  # time.monotonic() when the chunk's last sample arrived (latency measurement)


@dataclass(frozen=True)
class TrackReady:
    """A complete file in a watched folder, to be classified as a whole track."""

    source: str
    path: Path


@dataclass(frozen=True)
class TitleChanged:
    """A stream named what it plays now (Icecast/Shoutcast ``StreamTitle``, usually "Artist - Title")."""

    source: str
    title: str


@dataclass(frozen=True)
class SourceProblem:
    """Something went wrong but the source goes on (or, for finite sources, has ended)."""

    source: str
    reason: str
    path: str | None = None


SourceItem = AudioChunk | TrackReady | TitleChanged | SourceProblem
Emit = Callable[[SourceItem], None]


class SourceError(RuntimeError):
    """A source that cannot work at all (missing library, impossible configuration); not retried."""


class Source(ABC):
    """One input of the daemon. ``run`` blocks in its own thread until finished or ``stop`` is set."""

    id: str
    finite: bool = False

    @abstractmethod
    def run(self, emit: Emit, stop: threading.Event) -> None:
        """Produce items until the source ends or ``stop`` is set; recoverable faults become ``SourceProblem``."""

    def stats(self) -> dict[str, float | int]:
        """Counters for the periodic stats message (overflows, reconnects, queue depth...)."""
        return {}


class StreamClock:
    """Stream time for a live source's chunks, across reconnects.

    While connected, time advances by the samples emitted, so chunks are contiguous.
    After a reconnect it restarts at the wall-clock time since the source started
    (never going back): the jump tells the pipeline that continuity was lost, so it
    restarts its incremental frontend instead of stitching two streams together.
    """

    def __init__(self) -> None:
        self._start = time.monotonic()
        self._offset = 0.0
        self.samples = 0  # emitted since the current connection

    def reconnected(self) -> None:
        self._offset = max(self._offset + self.samples / SAMPLE_RATE, time.monotonic() - self._start)
        self.samples = 0

    def stamp(self, n_samples: int) -> float:
        """Stream time of the first of the next ``n_samples`` samples; counts them."""
        t = self._offset + self.samples / SAMPLE_RATE
        self.samples += n_samples
        return t
