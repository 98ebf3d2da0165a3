"""The one mel frontend shared by the runtime and the trainer.

The seed checkpoints only work with librosa's exact mel power spectrogram followed
by an unusual normalisation (dB relative to the window maximum, divided by the
window's minimum dB), so both steps live here and nowhere else: the trainer, the
``classify`` command and the live daemon all call these functions, which makes
train/serve skew impossible by construction.

Power frames are computed with torch/torchaudio; normalisation is per 30 s window
and therefore applied only when a window is classified, never to the stored frames.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import librosa
import numpy as np
import torch
import torchaudio.functional as AF

__all__ = [
    "FrontendConfig",
    "MelFrontend",
    "StreamingMel",
    "MelRingBuffer",
    "normalize_window",
]


@dataclass(frozen=True)
class FrontendConfig:
    """Parameters of the mel frontend; stored in every checkpoint and ONNX export."""

    sample_rate: int = 22050
    n_fft: int = 2048
    hop_length: int = 1024
    n_mels: int = 128
    f_min: float = 0.0
    f_max: float = 11025.0
    top_db: float = 80.0
    window_frames: int = 647

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
        return int(round(seconds * self.sample_rate / self.hop_length))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FrontendConfig":
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


class MelFrontend:
    """Mel power frames, numerically equal to ``librosa.feature.melspectrogram``.

    librosa: periodic Hann window, centred frames with reflect padding, Slaney mel
    scale with Slaney area normalisation, power 2. The STFT runs in float64: torch's
    float32 FFT drifts to ~4e-4 relative error in bins 80 dB down, which the model
    still sees, while float64 matches librosa to ~1e-6. Frames are computed in blocks
    so that an hour-long file never needs gigabytes of STFT at once.
    """

    BLOCK_FRAMES = 512

    def __init__(self, config: FrontendConfig | None = None) -> None:
        self.config = config or FrontendConfig()
        c = self.config
        self._window = torch.hann_window(c.n_fft, periodic=True, dtype=torch.float64)
        # (n_freqs, n_mels). librosa's own Slaney filterbank, computed in float64:
        # torchaudio's melscale_fbanks is the same formula evaluated in float32, which
        # leaves 1.6e-4 relative error in the top bands.
        fbank = librosa.filters.mel(
            sr=c.sample_rate,
            n_fft=c.n_fft,
            n_mels=c.n_mels,
            fmin=c.f_min,
            fmax=c.f_max,
            htk=False,
            norm="slaney",
            dtype=np.float64,
        )
        self._fbank = torch.from_numpy(np.ascontiguousarray(fbank.T))

    def frames_from_padded(self, padded: np.ndarray | torch.Tensor) -> np.ndarray:
        """Power mel frames (T, n_mels) of already padded audio, no centring.

        Frame ``t`` covers ``padded[t*hop : t*hop + n_fft]``; both the batch path and
        the streaming path go through here.
        """
        c = self.config
        x = torch.as_tensor(np.asarray(padded, dtype=np.float64))
        n_frames = 1 + (x.numel() - c.n_fft) // c.hop_length if x.numel() >= c.n_fft else 0
        out = np.empty((n_frames, c.n_mels), dtype=np.float32)
        for f0 in range(0, n_frames, self.BLOCK_FRAMES):
            f1 = min(n_frames, f0 + self.BLOCK_FRAMES)
            seg = x[f0 * c.hop_length : (f1 - 1) * c.hop_length + c.n_fft]
            power = AF.spectrogram(
                seg,
                pad=0,
                window=self._window,
                n_fft=c.n_fft,
                hop_length=c.hop_length,
                win_length=c.n_fft,
                power=2.0,
                normalized=False,
                center=False,
            )  # (freq, frames)
            out[f0:f1] = (power.transpose(0, 1) @ self._fbank).numpy()
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
    frame whose right half lies inside the audio; only the last ``n_fft // (2*hop)``
    frames of a finished batch computation (which reflect the end of the file) have
    no streaming counterpart, because a live stream has no end to reflect.
    """

    def __init__(self, frontend: MelFrontend | None = None) -> None:
        self.frontend = frontend or MelFrontend()
        c = self.frontend.config
        self._pad = c.n_fft // 2
        self._buf = np.zeros(0, dtype=np.float32)
        self._started = False
        self.frames_emitted = 0

    def reset(self) -> None:
        """Forget the stream, e.g. after a device was reopened and continuity is lost."""
        self._buf = np.zeros(0, dtype=np.float32)
        self._started = False
        self.frames_emitted = 0

    def push(self, chunk: np.ndarray) -> np.ndarray:
        """Append mono samples at the frontend's rate; return the newly completed frames (k, n_mels)."""
        c = self.frontend.config
        chunk = np.asarray(chunk, dtype=np.float32).reshape(-1)
        self._buf = np.concatenate([self._buf, chunk]) if self._buf.size else chunk.copy()
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
