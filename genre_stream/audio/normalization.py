"""How mel power frames become the network's input: the two normalisations a model may name.

A model says which one it was trained with (``ModelInfo.normalization``); the runtime gets its
normaliser from :class:`StreamNormalizer` by that name, so ``classify``, the watch folder, the
library scan and the daemon cannot disagree.

* ``SEED`` (``db_ref_max_top80_div_min``): the seed project's. dB below the *window's*
  loudest bin, floored 80 dB down, divided by the window's own range. Level-invariant, but
  every value of a window depends on the whole window: when the loudest bin enters or
  leaves, the window must be recomputed from scratch (docs/STREAMING.md).
* ``RUNNING`` (``db_ref_running_max_top80``, issue 23): each *frame* in dB below a reference
  ``R_t``, the loudest frame of the 30 s ending at it, over a fixed 80 dB, clipped to [0, 1].
  During a stream's first window ``R_t`` is the loudest frame of that first window, so a
  track of 30 s or less is normalised exactly like ``SEED`` whenever its range reaches 80 dB
  (368 of 383 shared clips). A frame is normalised once, whatever window it later falls in,
  so consecutive windows share their overlap bit for bit and streaming reuses it always.
  Still level-invariant: ``R_t`` follows the level within 30 s.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from .frontend import normalize_window

__all__ = ["NORMALIZATIONS", "RUNNING", "SEED", "RunningNormalizer", "StreamNormalizer", "running_normalize", "window_of"]

SEED = "db_ref_max_top80_div_min"
RUNNING = "db_ref_running_max_top80"
NORMALIZATIONS = (SEED, RUNNING)
AMIN = 1e-10  # the power floor before the logarithm, as in normalize_window


def _db(power: np.ndarray) -> np.ndarray:
    return 10.0 * np.log10(np.maximum(np.asarray(power, dtype=np.float64), AMIN))


def running_normalize(power: np.ndarray, window_frames: int, top_db: float = 80.0) -> np.ndarray:
    """``RUNNING`` over a whole stream of power frames (T, n_mels) at once; equal to :class:`RunningNormalizer`."""
    norm = RunningNormalizer(window_frames, top_db)
    out = norm.push(power)
    rest = norm.finish()
    return np.concatenate([out, rest]) if rest.size else out


class RunningNormalizer:
    """``RUNNING`` as a stream: push power frames, get each frame normalised once it is final.

    Frames of the first window are held until the window is complete (their reference is the
    first window's loudest frame) or the stream ends (:meth:`finish`); after that every frame
    is final on arrival. :meth:`provisional` gives the held frames as they would be if the
    stream ended now, for a caller that must classify a stream shorter than a window. Memory:
    one window of frames at most, plus a deque of at most one window of frame maxima.
    """

    def __init__(self, window_frames: int, top_db: float = 80.0) -> None:
        if window_frames < 1:
            raise ValueError(f"window_frames must be >= 1, got {window_frames}")
        self.window = window_frames
        self.top_db = float(top_db)
        self.reset()

    def reset(self) -> None:
        """Forget the stream (a new stream starts: a reconnect, a new file)."""
        self._t = 0  # frames pushed so far
        self._maxima: deque[tuple[int, float]] = deque()  # (frame, max dB) decreasing: the sliding max
        self._head: list[np.ndarray] = []  # dB of the first window's frames until it completes
        self._head_max = -np.inf

    @property
    def frames_seen(self) -> int:
        return self._t

    def _scale(self, db: np.ndarray, ref: np.ndarray | float) -> np.ndarray:
        ref = np.asarray(ref, dtype=np.float64).reshape(-1, 1)  # one reference per frame, or one for all
        return (np.clip(ref - db, 0.0, self.top_db) / self.top_db).astype(np.float32)

    def push(self, power: np.ndarray) -> np.ndarray:
        """Normalise the frames that are final after this push; (k, n_mels) float32, possibly k = 0."""
        power = np.asarray(power)
        if power.ndim != 2:
            raise ValueError(f"power frames must be (frames, mel bands), got shape {power.shape}")
        db = _db(power)
        peaks = db.max(axis=1, initial=-np.inf)  # each frame's loudest bin
        out: list[np.ndarray] = []
        i = 0
        n = db.shape[0]
        if self._t < self.window and n:  # still filling the first window
            i = min(n, self.window - self._t)
            for peak in peaks[:i]:
                self._slide(float(peak))
            self._head.extend(db[:i])
            self._head_max = max(self._head_max, float(peaks[:i].max()))
            if self._t == self.window:
                out.append(self._scale(np.stack(self._head), self._head_max))
                self._head = []
        if i < n:
            out.append(self._scale(db[i:], [self._slide(float(peak)) for peak in peaks[i:]]))
        if not out:
            return np.zeros((0, power.shape[1]), dtype=np.float32)
        return np.concatenate(out)

    def _slide(self, peak: float) -> float:
        """Add the next frame's loudest bin; return the loudest of the latest ``window`` frames (this one included)."""
        t = self._t
        self._t += 1
        while self._maxima and self._maxima[-1][1] <= peak:
            self._maxima.pop()
        self._maxima.append((t, peak))
        while self._maxima[0][0] <= t - self.window:
            self._maxima.popleft()
        return self._maxima[0][1]

    def provisional(self) -> np.ndarray:
        """The held first-window frames as :meth:`finish` would give them now (nothing is consumed)."""
        if not self._head:
            return np.zeros((0, 0), dtype=np.float32)
        return self._scale(np.stack(self._head), self._head_max)

    def finish(self) -> np.ndarray:
        """The stream ended: release the held frames of a stream shorter than one window."""
        out = self.provisional()
        self._head = []
        return out


class StreamNormalizer:
    """A model's normalisation over one stream of power frames, chosen by its name: the runtime's one switch on it.

    :meth:`push` returns the frames windows are cut from and :meth:`window` turns one window of
    them into the model's input. ``SEED`` needs the whole window, so its frames pass through as
    power and each window is normalised when it is cut; ``RUNNING`` normalises each frame once
    on its way in (:class:`RunningNormalizer`), so a window is a plain slice. Frames ``RUNNING``
    still holds (the first window's, until it completes) come from :meth:`held`; while any are
    held none has been returned, so a caller takes either the held frames or its stored ones.
    """

    def __init__(self, name: str, window_frames: int, top_db: float) -> None:
        if name not in NORMALIZATIONS:
            raise ValueError(f"unknown normalization {name!r}; known: {', '.join(NORMALIZATIONS)}")
        self.name = name
        self.top_db = float(top_db)
        self._running = RunningNormalizer(window_frames, top_db) if name == RUNNING else None

    def push(self, power: np.ndarray) -> np.ndarray:
        """The frames to store from these power frames: ``SEED`` the frames themselves, ``RUNNING`` those now final."""
        return power if self._running is None else self._running.push(power)

    def held(self) -> np.ndarray:
        """Frames pushed but not returned yet, as :meth:`finish` would return them now (empty for ``SEED``)."""
        return np.zeros((0, 0), dtype=np.float32) if self._running is None else self._running.provisional()

    def finish(self) -> np.ndarray:
        """The stream ended: the frames still held (a ``RUNNING`` stream shorter than one window)."""
        return np.zeros((0, 0), dtype=np.float32) if self._running is None else self._running.finish()

    def window(self, frames: np.ndarray) -> np.ndarray:
        """The model's input for one window of stored frames, as a new float32 array the caller may keep."""
        if self._running is None:
            return normalize_window(frames, self.top_db)
        return np.array(frames, dtype=np.float32)


def window_of(name: str, power: np.ndarray, top_db: float = 80.0) -> np.ndarray:
    """One window of power frames normalised on its own, as a whole stream (a short track looped to 30 s)."""
    norm = StreamNormalizer(name, max(1, len(power)), top_db)
    return norm.window(norm.push(power))  # a stream exactly one window long: every frame is final on this push
