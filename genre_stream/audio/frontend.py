"""The one mel frontend shared by the runtime and the trainer.

The seed checkpoints only work with librosa's exact mel power spectrogram followed
by an unusual normalisation (dB relative to the window maximum, divided by the
window's minimum dB), so both steps are defined here and nowhere else: the
trainer, the ``classify`` command and the live daemon all call these classes,
which makes train/serve skew impossible by construction.

The definition is torchaudio's spectrogram with librosa's Slaney filterbank; the
trainer runs it with torch (``trainer.frontend_torch``), the runtime runs the same
arithmetic with numpy's float64 FFT so that tagging needs no torch. The tests hold
both to each other and to librosa within 1e-3 dB. An ONNX STFT was measured too
(~170 ms per 30 s against ~35 ms here), which is why the runtime does not use one.

The seed normalisation (``normalize_window``) is per 30 s window and therefore applied
only when a window is classified, never to the stored frames; which normalisation a
model takes, and the per-frame one, are in ``normalization.py``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

SAMPLE_RATE = 22050  # Hz: the model's input rate; everything inside the pipeline runs at it (the one place it is said)

__all__ = [
    "FRONTEND_VERSION",
    "FrontendConfig",
    "MelFrontend",
    "MelRingBuffer",
    "StreamingMel",
    "mel_filterbank",
    "normalize_window",
]

# Bumped whenever the numbers the frontend produces change (padding, filterbank, STFT),
# so a model or a trainer cache made with another definition is refused, not silently misfed.
FRONTEND_VERSION = 1


@dataclass(frozen=True)
class FrontendConfig:
    """Parameters of the mel frontend; stored in every checkpoint, ONNX export and trainer cache."""

    sample_rate: int = SAMPLE_RATE
    n_fft: int = 2048
    hop_length: int = 1024
    n_mels: int = 128
    f_min: float = 0.0
    f_max: float = 11025.0
    top_db: float = 80.0
    window_frames: int = 647
    # Records written before the version existed were made with version 1, the only one then.
    version: int = FRONTEND_VERSION

    @property
    def window_samples(self) -> int:
        """Audio samples a centred STFT needs to yield exactly ``window_frames`` frames."""
        return (self.window_frames - 1) * self.hop_length

    @property
    def window_seconds(self) -> float:
        return self.window_samples / self.sample_rate

    def frames_to_seconds(self, frames: float) -> float:
        return frames * self.hop_length / self.sample_rate

    def seconds_to_frames(self, seconds: float) -> int:
        return round(seconds * self.sample_rate / self.hop_length)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FrontendConfig:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        known.setdefault("version", 1)
        return cls(**known)


def _hz_to_mel(freqs: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa ``htk=False``): linear below 1 kHz, logarithmic above."""
    f_sp = 200.0 / 3
    mels = freqs / f_sp
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
    return np.where(freqs >= min_log_hz, min_log_mel + np.log(np.maximum(freqs, 1e-300) / min_log_hz) / logstep, mels)


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    f_sp = 200.0 / 3
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
    return np.where(mels >= min_log_mel, min_log_hz * np.exp(logstep * (mels - min_log_mel)), f_sp * mels)


def mel_filterbank(config: FrontendConfig) -> np.ndarray:
    """librosa's Slaney-normalised mel filterbank in float64, shape (n_fft // 2 + 1, n_mels).

    The same arithmetic as ``librosa.filters.mel(norm="slaney", htk=False)``, written
    out so the runtime needs no librosa; torchaudio's ``melscale_fbanks`` is the same
    formula in float32, which leaves 1.6e-4 relative error in the top bands, so both
    frontends use this one.
    """
    c = config
    fft_freqs = np.fft.rfftfreq(c.n_fft, d=1.0 / c.sample_rate)
    mel_pts = _mel_to_hz(np.linspace(_hz_to_mel(np.array(c.f_min)), _hz_to_mel(np.array(c.f_max)), c.n_mels + 2))
    fdiff = np.diff(mel_pts)
    ramps = np.subtract.outer(mel_pts, fft_freqs)
    weights = np.zeros((c.n_mels, fft_freqs.size), dtype=np.float64)
    for i in range(c.n_mels):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_pts[2 : c.n_mels + 2] - mel_pts[: c.n_mels]))[:, None]
    return np.ascontiguousarray(weights.T)


class MelFrontend:
    """Mel power frames, numerically equal to ``librosa.feature.melspectrogram``.

    librosa: periodic Hann window, centred frames with reflect padding, Slaney mel
    scale with Slaney area normalisation, power 2. The STFT runs in float64: a float32
    FFT drifts to ~4e-4 relative error in bins 80 dB down, which the model still sees,
    while float64 matches librosa to ~1e-6. Frames are computed in blocks so that an
    hour-long file never needs gigabytes of STFT at once. Subclasses replace only
    ``_power_block`` (the trainer's torch version).
    """

    BLOCK_FRAMES = 512

    def __init__(self, config: FrontendConfig | None = None) -> None:
        self.config = config or FrontendConfig()
        if self.config.version != FRONTEND_VERSION:
            raise ValueError(
                f"frontend version {self.config.version} is not the one this genre-stream computes "
                f"({FRONTEND_VERSION}); re-export the model or re-prepare the cache with this version"
            )
        c = self.config
        n = np.arange(c.n_fft, dtype=np.float64)
        self._hann = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / c.n_fft)  # periodic, as torch.hann_window
        self._fbank = mel_filterbank(c)

    def _power_block(self, segment: np.ndarray, n_frames: int) -> np.ndarray:
        """Mel power (n_frames, n_mels) of ``segment`` (float64), frames ``hop`` apart, no padding."""
        c = self.config
        frames = np.lib.stride_tricks.as_strided(
            segment, shape=(n_frames, c.n_fft), strides=(segment.strides[0] * c.hop_length, segment.strides[0]), writeable=False
        )
        spec = np.fft.rfft(frames * self._hann, axis=1)
        power = spec.real**2 + spec.imag**2
        return power @ self._fbank

    def frames_from_padded(self, padded: np.ndarray) -> np.ndarray:
        """Power mel frames (T, n_mels) of already padded audio, no centring.

        Frame ``t`` covers ``padded[t*hop : t*hop + n_fft]``; both the batch path and
        the streaming path go through here.
        """
        c = self.config
        x = np.ascontiguousarray(padded, dtype=np.float64).reshape(-1)
        n_frames = 1 + (x.size - c.n_fft) // c.hop_length if x.size >= c.n_fft else 0
        out = np.empty((n_frames, c.n_mels), dtype=np.float32)
        for f0 in range(0, n_frames, self.BLOCK_FRAMES):
            f1 = min(n_frames, f0 + self.BLOCK_FRAMES)
            seg = x[f0 * c.hop_length : (f1 - 1) * c.hop_length + c.n_fft]
            out[f0:f1] = self._power_block(seg, f1 - f0)
        return out

    def power(self, audio: np.ndarray) -> np.ndarray:
        """Mel power frames (T, n_mels) of mono audio at ``config.sample_rate``, centred like librosa."""
        c = self.config
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim != 1:
            raise ValueError(f"expected mono audio (1-D), got shape {audio.shape}")
        if audio.size == 0:
            return np.zeros((0, c.n_mels), dtype=np.float32)
        pad = c.n_fft // 2
        mode = "reflect" if audio.size > pad else "constant"
        padded = np.pad(audio, (pad, pad), mode=mode)
        return self.frames_from_padded(padded)

    def window(self, audio: np.ndarray) -> np.ndarray:
        """Normalised model input (window_frames, n_mels) of one clip, looped to 30 s if shorter."""
        c = self.config
        audio = loop_to_length(np.asarray(audio, dtype=np.float32), c.window_samples)
        return normalize_window(self.power(audio)[: c.window_frames], c.top_db)


def loop_to_length(audio: np.ndarray, length: int) -> np.ndarray:
    """Repeat a short clip until it is ``length`` samples long (longer clips are returned as is).

    The network was trained on 30 s clips; looping keeps the texture of a short
    excerpt instead of filling the window with silence that would dominate the
    max-relative dB scale.
    """
    if audio.size == 0:
        raise ValueError("cannot loop empty audio")
    if audio.size >= length:
        return audio
    reps = int(np.ceil(length / audio.size))
    return np.tile(audio, reps)[:length]


def normalize_window(power: np.ndarray, top_db: float = 80.0) -> np.ndarray:
    """The seed normalisation of one window of power frames, values in [0, 1].

    dB relative to the window's maximum, floored ``top_db`` below it, then divided
    by the window's minimum dB: 0 is the loudest bin, 1 the floor. A window with no
    dynamic range at all (digital silence) maps to zeros rather than dividing by 0.
    """
    amin = 1e-10
    db = 10.0 * np.log10(np.maximum(np.asarray(power, dtype=np.float64), amin))
    db -= db.max(initial=10.0 * np.log10(amin))
    db = np.maximum(db, -top_db)
    lowest = float(db.min(initial=0.0))
    if lowest >= 0.0:
        return np.zeros(db.shape, dtype=np.float32)
    return (db / lowest).astype(np.float32)


class StreamingMel:
    """Incremental mel frames: push audio chunks of any size, get frames as soon as they are complete.

    The stream start is reflect-padded exactly like the batch path, so frame ``t`` of
    a stream equals frame ``t`` of ``MelFrontend.power`` on the same audio for every
    frame whose right half lies inside the audio. The last ``n_fft // (2*hop)`` frames
    of a batch computation reflect the end of the file, which a live stream does not
    have; a finite stream gets them from ``finish``, after which the frames equal the
    batch frames exactly.
    """

    def __init__(self, frontend: MelFrontend | None = None) -> None:
        self.frontend = frontend or MelFrontend()
        c = self.frontend.config
        self._pad = c.n_fft // 2
        self.reset()

    def reset(self) -> None:
        """Forget the stream, e.g. after a device was reopened and continuity is lost."""
        self._buf = np.zeros(0, dtype=np.float32)
        self._tail = np.zeros(0, dtype=np.float32)  # the last pad + 1 samples, for finish()'s reflection
        self._started = False
        self.frames_emitted = 0

    def push(self, chunk: np.ndarray) -> np.ndarray:
        """Append mono samples at the frontend's rate; return the newly completed frames (k, n_mels)."""
        c = self.frontend.config
        chunk = np.asarray(chunk, dtype=np.float32).reshape(-1)
        self._buf = np.concatenate([self._buf, chunk]) if self._buf.size else chunk.copy()
        self._tail = np.concatenate([self._tail, chunk])[-(self._pad + 1) :]
        if not self._started:
            if self._buf.size <= self._pad:
                return np.zeros((0, c.n_mels), dtype=np.float32)
            head = self._buf[1 : self._pad + 1][::-1]
            self._buf = np.concatenate([head, self._buf])
            self._started = True
        available = self._buf.size - c.n_fft
        if available < 0:
            return np.zeros((0, c.n_mels), dtype=np.float32)
        n_frames = available // c.hop_length + 1
        used = (n_frames - 1) * c.hop_length + c.n_fft
        frames = self.frontend.frames_from_padded(self._buf[:used])
        self._buf = self._buf[n_frames * c.hop_length :].copy()
        self.frames_emitted += n_frames
        return frames

    def finish(self) -> np.ndarray:
        """End of a finite stream: the remaining frames, the end reflected as the batch path does.

        A stream that never grew past ``n_fft // 2`` samples is padded with zeros, like
        ``MelFrontend.power`` pads such a short clip. The stream is reset afterwards.
        """
        if not self._started:
            frames = self.frontend.power(self._buf)
        else:
            right = self._tail[-2::-1][: self._pad]  # np.pad(mode="reflect") of the end
            frames = self.frontend.frames_from_padded(np.concatenate([self._buf, right]))
        self.reset()
        return frames


class MelRingBuffer:
    """The rolling window of the latest ``capacity`` mel power frames (30 s by default)."""

    def __init__(self, capacity: int = 647, n_mels: int = 128) -> None:
        self.capacity = capacity
        self._data = np.zeros((capacity, n_mels), dtype=np.float32)
        self._count = 0  # total frames ever written
        self._pos = 0  # next write index

    def __len__(self) -> int:
        return min(self._count, self.capacity)

    @property
    def total_frames(self) -> int:
        return self._count

    def clear(self) -> None:
        self._count = 0
        self._pos = 0

    def extend(self, frames: np.ndarray) -> None:
        frames = np.asarray(frames, dtype=np.float32)
        total = frames.shape[0]
        frames = frames[-self.capacity :]
        first = min(frames.shape[0], self.capacity - self._pos)
        self._data[self._pos : self._pos + first] = frames[:first]
        self._data[: frames.shape[0] - first] = frames[first:]
        self._pos = (self._pos + frames.shape[0]) % self.capacity
        self._count += total

    def latest(self) -> np.ndarray:
        """The buffered frames in time order, oldest first (len(self), n_mels)."""
        n = len(self)
        if n < self.capacity:
            return self._data[:n].copy()
        return np.concatenate([self._data[self._pos :], self._data[: self._pos]])
