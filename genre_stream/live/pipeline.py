"""The per-source chain of the daemon: audio chunks in, state and change messages out.

StreamingMel turns chunks into mel power frames as they complete; the latest
30 s (647 frames) sit in a MelRingBuffer. Every ``hop_seconds`` of audio, once
``min_fill_seconds`` are buffered, the window is normalised as the model names,
exactly like ``classify`` does (a short buffer is looped to 30 s first), and classified,
unless the buffered audio is quieter than ``silence_dbfs``, which yields a
``silence`` state without running the model. The Smoother decides which genre
is announced. Classification happens on a fixed grid of frames, independent
of how the source happens to cut its chunks, so a recording gives the same
answers played live or fast.

Besides the messages it returns (which the daemon publishes to the sinks), the pipeline
tells its listeners (``PipelineListener``: the dashboard) what only it sees: new mel
frames, and each classified window with its inference time. Whole files of a watched
folder take another path (``tagging.TrackTagger``).
"""

from __future__ import annotations

import collections
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..audio.frontend import MelFrontend, MelRingBuffer, StreamingMel
from ..audio.normalization import StreamNormalizer
from ..audio.sanitize import LOUD, dbfs, repair
from ..config import PipelineConfig
from ..model.calibration import UncertaintyRule
from ..model.engine import Engine
from ..model.streaming import StreamingClassifier
from ..sinks.messages import GenreEvent, GenreState, Message, State
from ..sources.base import AudioChunk
from .smoother import Smoother

log = logging.getLogger(__name__)

# Stream time may wander by a few samples (rounding in resamplers); a larger jump
# means the source lost audio (device reopened, stream reconnected).
DISCONTINUITY_SECONDS = 0.25


def _loop_frames(frames: np.ndarray, length: int) -> np.ndarray:
    """Repeat buffered frames to ``length`` rows, the frame-domain twin of ``frontend.loop_to_length``.

    Looping the frames (rather than re-computing mel on looped audio) costs nothing and
    differs only in the one or two frames that straddle each seam.
    """
    if frames.shape[0] >= length:
        return frames
    return frames[np.arange(length) % frames.shape[0]]


def uncertainty_rule(engine: Engine, config: PipelineConfig) -> UncertaintyRule:
    """The daemon's "uncertain" rule: the model's calibrated defaults unless the config overrides them."""
    return UncertaintyRule.for_model(engine.info.calibration, config.uncertain_threshold, config.uncertain_margin)


@dataclass(frozen=True)
class ClassifiedWindow:
    """One window the pipeline classified, as its listeners hear of it."""

    source: str
    messages: tuple[Message, ...]  # what ``feed``/``flush`` returns for it: the GenreState, a genre_changed event
    inference_seconds: float | None  # the model's time for this window; None when it was silent (the model did not run)
    level_dbfs: float | None = None  # RMS level of the window's audio (``level_dbfs()``), as compared with...
    silence_dbfs: float | None = None  # ...the silence threshold it was judged against (``pipeline.silence_dbfs``)


class PipelineListener(Protocol):
    """Who follows a source's audio path besides the sinks (the dashboard: live spectrogram, latency).

    Called in the source's thread while the pipeline is consistent; must be quick (a copy at
    most). A listener that raises is logged and the audio path goes on.
    """

    def mel_updated(self, source: str, ring: MelRingBuffer) -> None:
        """New mel frames are in ``ring`` (after each chunk that completed frames)."""

    def window_classified(self, window: ClassifiedWindow) -> None:
        """A window was classified (or found silent)."""

    def audio_received(self, source: str, samples: np.ndarray) -> None:
        """A chunk entered the pipeline: mono float32 at the frontend's rate, already repaired. Optional: a
        listener without this method hears no audio. ``samples`` must not be kept (copy what is needed)."""


class SourcePipeline:
    def __init__(self, source_id: str, engine: Engine, config: PipelineConfig | None = None, *,
                 listeners: Sequence[PipelineListener] = ()) -> None:
        self.source_id = source_id
        self.title: str | None = None  # what the stream says it plays (ICY StreamTitle), carried by every state
        self.engine = engine
        self.config = config or PipelineConfig()
        self.listeners = tuple(listeners)
        self._hearing = tuple(listener for listener in self.listeners if hasattr(listener, "audio_received"))
        self.frontend = MelFrontend(engine.info.frontend)
        fc = self.frontend.config
        self._fc = fc
        self.mel = StreamingMel(self.frontend)
        self.ring = MelRingBuffer(fc.window_frames, fc.n_mels)  # power frames, as listeners draw them
        # What windows are made of: the ring's frames through the model's normaliser (SEED: the same power
        # frames; RUNNING: each normalised once, so consecutive windows share their overlap bit for bit).
        # Fed the ring's frames in the ring's order and, like the ring, kept through a discontinuity (the
        # buffered frames stay) and made anew with the pipeline (a reload).
        self.normalizer = StreamNormalizer(engine.info.normalization, fc.window_frames, fc.top_db)
        self._inputs = MelRingBuffer(fc.window_frames, fc.n_mels)
        self.smoother = Smoother(engine.labels, self.config.ema_alpha, self.config.hold_windows, self.config.margin,
                                 uncertainty_rule(engine, self.config), engine.info.gate)
        self._hop_frames = max(1, fc.seconds_to_frames(self.config.hop_seconds))
        # Full windows reuse the previous window's columns where the model has a streaming pack;
        # that needs a hop of whole columns, so the hop is rounded down to one (5 s: 108 frames
        # already is; 1 s: 22 -> 20 frames, 0.93 s).
        self.streaming = StreamingClassifier.for_engine(engine) if self.config.streaming else None
        if self.streaming is not None:
            snapped = self.streaming.snap_hop(self._hop_frames)
            if snapped != self._hop_frames:
                log.info("%s: hop %.3f s snapped to %.3f s (%d frames) for streaming inference", source_id,
                         fc.frames_to_seconds(self._hop_frames), fc.frames_to_seconds(snapped), snapped)
            self._hop_frames = snapped
        self._min_frames = min(fc.window_frames, max(1, fc.seconds_to_frames(self.config.min_fill_seconds)))
        self._frames_since = 0  # frames added since the last classification
        self._energy: collections.deque[tuple[int, float]] = collections.deque()  # (samples, sum of squares) per chunk
        self._energy_n = 0
        self._energy_sum = 0.0
        self._origin: float | None = None  # stream time of the first sample after the last (re)start
        self._frames_from_origin = 0  # frames put into the ring since then
        self._expected: float | None = None  # stream time the next chunk should start at
        # stats
        self.windows = 0
        self.silent_windows = 0
        self.discontinuities = 0
        self.nonfinite_samples = 0  # NaN/Inf samples replaced by silence
        self.clipped_samples = 0  # samples beyond +-sanitize.LOUD
        self._repairing = False  # the previous chunk needed repair (log once per bad stretch)
        self._audio_seconds = 0.0
        self._busy_seconds = 0.0
        self._inference_last_ms = 0.0
        self._inference_total_ms = 0.0

    # -- input -------------------------------------------------------------------------------

    def title_changed(self, title: str) -> list[Message]:
        """The stream named a new track: later states carry it, and a ``track_changed`` event says so."""
        previous, self.title = self.title, title
        return [GenreEvent.track_changed(self.source_id, previous, title)] if title != previous else []

    def feed(self, chunk: AudioChunk) -> list[Message]:
        """Add one chunk; the messages of every classification it completes (usually none or one)."""
        started = time.perf_counter()
        samples = self._repair(np.asarray(chunk.samples, dtype=np.float32).reshape(-1))
        sr = self._fc.sample_rate
        if self._expected is not None and abs(chunk.time - self._expected) > DISCONTINUITY_SECONDS:
            log.info("%s: audio jumped from %.2f s to %.2f s; restarting the frontend", self.source_id, self._expected, chunk.time)
            self.mel.reset()  # frames must not straddle the gap; the buffered frames stay
            self._origin = None
            self._frames_from_origin = 0
            self.discontinuities += 1
        if self._origin is None:
            self._origin = chunk.time
        self._expected = chunk.time + samples.size / sr
        self._audio_seconds += samples.size / sr
        self._add_energy(samples)
        if self._hearing and samples.size:
            self._announce(lambda listener: listener.audio_received(self.source_id, samples), self._hearing)
        messages: list[Message] = []
        frames = self.mel.push(samples)
        added = frames.shape[0] > 0
        while frames.shape[0]:
            # Add frames up to the next point where a classification can be due, so windows
            # fall on the same frame grid however the source cuts its chunks.
            due_in = max(self._hop_frames - self._frames_since, self._min_frames - len(self.ring), 1)
            take = min(frames.shape[0], due_in)
            self.ring.extend(frames[:take])
            self._inputs.extend(self.normalizer.push(frames[:take]))
            self._frames_since += take
            self._frames_from_origin += take
            frames = frames[take:]
            if self._frames_since >= self._hop_frames and len(self.ring) >= self._min_frames:
                messages.extend(self._classify())
        if added:
            self._announce(lambda listener: listener.mel_updated(self.source_id, self.ring))
        self._busy_seconds += time.perf_counter() - started
        return messages

    def flush(self) -> list[Message]:
        """End of a finite source: classify the frames not yet classified, if enough are buffered."""
        if self._frames_since == 0 or len(self.ring) < self._min_frames:
            return []
        started = time.perf_counter()
        messages = self._classify()
        self._busy_seconds += time.perf_counter() - started
        return messages

    def _announce(self, tell: Callable[[PipelineListener], None], listeners: Sequence[PipelineListener] | None = None) -> None:
        for listener in self.listeners if listeners is None else listeners:
            try:
                tell(listener)
            except Exception:  # a dashboard bug must not cost the sinks a window
                log.exception("%s: pipeline listener %s failed", self.source_id, type(listener).__name__)

    def _repair(self, samples: np.ndarray) -> np.ndarray:
        """Non-finite samples -> 0, absurd magnitudes clipped (sanitize.py); counted, logged when a bad stretch starts."""
        samples, repaired = repair(samples)
        if repaired and not self._repairing:
            log.warning("%s: audio with %d non-finite and %d out-of-range samples (beyond +-%g); "
                        "replaced by silence / clipped", self.source_id, repaired.nonfinite, repaired.clipped, LOUD)
        self._repairing = bool(repaired)
        self.nonfinite_samples += repaired.nonfinite
        self.clipped_samples += repaired.clipped
        return samples

    def _add_energy(self, samples: np.ndarray) -> None:
        if samples.size == 0:
            return
        sq = float(np.dot(samples.astype(np.float64), samples.astype(np.float64)))
        self._energy.append((samples.size, sq))
        self._energy_n += samples.size
        self._energy_sum += sq
        window = self._fc.window_samples
        popped = False
        while self._energy and self._energy_n - self._energy[0][0] >= window:
            n, _ = self._energy.popleft()
            self._energy_n -= n
            popped = True
        if popped:
            # Re-add instead of subtracting: after a loud stretch leaves the window, a running
            # difference would keep its rounding error, far larger than quiet audio's energy.
            self._energy_sum = math.fsum(s for _, s in self._energy)

    def level_dbfs(self) -> float:
        """RMS level of the audio behind the current window, in dB relative to full scale."""
        if self._energy_n == 0:
            return -math.inf
        return dbfs(max(self._energy_sum / self._energy_n, 0.0))

    # -- classification ----------------------------------------------------------------------

    def _window_times(self) -> tuple[float, float]:
        fc = self._fc
        end = (self._origin or 0.0) + fc.frames_to_seconds(self._frames_from_origin)
        return max(0.0, end - fc.frames_to_seconds(len(self.ring))), end

    def _classify(self) -> list[Message]:
        self._frames_since = 0
        self.windows += 1
        start, end = self._window_times()
        level = self.level_dbfs()
        if level < self.config.silence_dbfs:
            self.silent_windows += 1
            self.smoother.restart_average()
            silent: list[Message] = [GenreState(self.source_id, None, 0.0, {}, State.SILENCE, start, end, self.engine.model_id, title=self.title)]
            quiet = ClassifiedWindow(self.source_id, tuple(silent), None, level, self.config.silence_dbfs)
            self._announce(lambda listener: listener.window_classified(quiet))
            return silent
        held = self.normalizer.held()  # RUNNING's first window, until it is complete
        window = self.normalizer.window(_loop_frames(held if held.size else self._inputs.latest(), self._fc.window_frames))
        t0 = time.perf_counter()
        if self.streaming is not None:  # a short buffer looped to 30 s is no slice of the stream: no start
            full = len(self.ring) == self._fc.window_frames
            prediction = self.streaming.predict(window, self.ring.total_frames - self._fc.window_frames if full else None)
        else:
            prediction = self.engine.predict(window[None])
        probabilities = prediction.probabilities[0]
        self._inference_last_ms = (time.perf_counter() - t0) * 1000.0
        self._inference_total_ms += self._inference_last_ms
        result = self.smoother.update(probabilities, None if prediction.not_music is None else float(prediction.not_music[0]))
        labels = self.engine.labels
        challenged = result.state.names_genre and result.leader != result.genre  # announced and leading differ
        messages: list[Message] = [
            GenreState(
                source=self.source_id,
                genre=result.state.genre(result.genre),
                confidence=result.confidence if result.state.names_genre else 0.0,
                probabilities={label: float(p) for label, p in zip(labels, result.probabilities)},
                state=result.state,
                window_start=start,
                window_end=end,
                model=self.engine.model_id,
                not_music=result.not_music,
                leading=result.leader if challenged else None,
                leading_confidence=result.leader_confidence if challenged else None,
                title=self.title,
            )
        ]
        if result.changed:
            log.info("%s: genre %s%s (%.2f)", self.source_id, f"{result.previous} -> " if result.previous else "", result.genre, result.confidence)
            messages.append(GenreEvent.genre_changed(self.source_id, result.previous, result.genre, result.confidence))
        classified = ClassifiedWindow(self.source_id, tuple(messages), self._inference_last_ms / 1000.0, level,
                                      self.config.silence_dbfs)
        self._announce(lambda listener: listener.window_classified(classified))
        return messages

    def stats(self) -> dict[str, float | int]:
        inferred = self.windows - self.silent_windows
        return {
            "windows": self.windows,
            "silent_windows": self.silent_windows,
            "inference_ms_last": round(self._inference_last_ms, 3),
            "inference_ms_mean": round(self._inference_total_ms / inferred, 3) if inferred else 0.0,
            "real_time_factor": self._busy_seconds / self._audio_seconds if self._audio_seconds else 0.0,
            "audio_seconds": round(self._audio_seconds, 3),
            "buffered_seconds": round(self._fc.frames_to_seconds(len(self.ring)), 3),
            "discontinuities": self.discontinuities,
            "nonfinite_samples": self.nonfinite_samples,
            "clipped_samples": self.clipped_samples,
        }
