"""Decoding files to mono float32 at the model's rate, with errors a user can act on.

libsndfile (soundfile) reads wav/flac/ogg/mp3/au/aiff directly; anything it
refuses is handed to ffmpeg when it is installed. Every failure becomes an
``AudioError`` naming the file and the reason, so one bad file never takes a
batch down with a traceback.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".oga", ".mp3", ".au", ".snd", ".aif", ".aiff", ".aifc"})


class AudioError(Exception):
    """A file that could not be decoded; ``str()`` is the one-line message for the user."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def to_mono(audio: np.ndarray) -> np.ndarray:
    """Average the channels of (frames, channels) audio; 1-D input is returned as is."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 2:
        return audio.mean(axis=1, dtype=np.float32)
    return audio


def resample(audio: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Band-limited resampling (torchaudio's windowed sinc) of mono float32 audio."""
    if orig_sr == target_sr or audio.size == 0:
        return np.asarray(audio, dtype=np.float32)
    out = AF.resample(torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)), orig_sr, target_sr)
    return out.numpy()


def ffmpeg_executable() -> str | None:
    """The system ffmpeg if installed, else the one bundled with imageio-ffmpeg (a dependency)."""
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        return None


def _ffmpeg_decode(path: Path, sr: int) -> np.ndarray:
    ffmpeg = ffmpeg_executable()
    if ffmpeg is None:
        raise AudioError(path, "format not readable by libsndfile and no ffmpeg was found")
    cmd = [ffmpeg, "-nostdin", "-v", "error", "-i", str(path), "-f", "f32le", "-ac", "1", "-ar", str(sr), "-"]
    proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0:
        msg = proc.stderr.decode(errors="replace").strip().splitlines()
        raise AudioError(path, f"not decodable audio ({msg[-1] if msg else 'ffmpeg failed'})")
    return np.frombuffer(proc.stdout, dtype="<f4").astype(np.float32)


def _declared_frames(path: Path, handle: sf.SoundFile) -> int:
    """Frames the file says it holds, to tell a truncated file from a short one.

    libsndfile trusts the data actually present for WAV, so the RIFF ``data`` chunk
    size is read directly; for other formats (e.g. MP3 with a Xing header) the
    library's own frame count is the declared length.
    """
    if handle.format == "WAV":
        try:
            with open(path, "rb") as fh:
                head = fh.read(1 << 16)
        except OSError:
            return 0
        pos = 12
        while pos + 8 <= len(head):
            chunk, size = head[pos : pos + 4], int.from_bytes(head[pos + 4 : pos + 8], "little")
            if chunk == b"data":
                frame_bytes = handle.channels * max(1, _SUBTYPE_BYTES.get(handle.subtype, 0))
                return size // frame_bytes if _SUBTYPE_BYTES.get(handle.subtype) and size < 0xFFFFFFF0 else 0
            pos += 8 + size + (size & 1)
        return 0
    return int(handle.frames)


_SUBTYPE_BYTES = {"PCM_U8": 1, "PCM_S8": 1, "PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "FLOAT": 4, "DOUBLE": 8}


def load_audio(path: str | Path, sr: int = 22050) -> np.ndarray:
    """Decode a whole file to mono float32 at ``sr``. Raises ``AudioError`` with the reason."""
    path = Path(path)
    if not path.exists():
        raise AudioError(path, "no such file")
    if path.is_dir():
        raise AudioError(path, "is a directory")
    try:
        if path.stat().st_size == 0:
            raise AudioError(path, "empty file")
    except OSError as exc:
        raise AudioError(path, f"cannot stat ({exc.strerror})") from exc
    try:
        handle = sf.SoundFile(bytes(path))  # bytes: names that are not UTF-8 open too
    except sf.LibsndfileError as exc:
        log.debug("libsndfile cannot open %s (%s); trying ffmpeg", path, exc)
        audio = _ffmpeg_decode(path, sr)
    except PermissionError as exc:
        raise AudioError(path, "permission denied") from exc
    except (RuntimeError, OSError) as exc:
        raise AudioError(path, f"read failed ({exc})") from exc
    else:
        with handle:
            declared = _declared_frames(path, handle)
            try:
                data = handle.read(dtype="float32", always_2d=True)
            except (sf.LibsndfileError, RuntimeError) as exc:
                raise AudioError(path, f"corrupt or truncated audio data ({exc})") from exc
            if declared and data.shape[0] < 0.99 * declared - handle.samplerate * 0.05:
                raise AudioError(
                    path,
                    f"truncated: the header promises {declared / handle.samplerate:.1f} s, "
                    f"only {data.shape[0] / handle.samplerate:.1f} s are present",
                )
            audio = resample(to_mono(data), int(handle.samplerate), sr)
    if audio.size == 0:
        raise AudioError(path, "no audio samples (empty or truncated file)")
    if not np.all(np.isfinite(audio)):
        raise AudioError(path, "contains NaN or infinite samples")
    return audio


def find_audio_files(paths: list[str | Path]) -> tuple[list[Path], list[AudioError]]:
    """Expand files and directories (recursively, by extension) into a sorted file list.

    Paths named explicitly are kept whatever their extension, so a user who names a
    non-audio file gets a decoding error for it instead of silence; paths that do
    not exist, cannot be looked at, or folders that cannot be read come back as
    errors (never silently skipped), and the other paths are still expanded.
    """
    files: list[Path] = []
    errors: list[AudioError] = []

    def unreadable(exc: OSError) -> None:
        errors.append(AudioError(exc.filename, f"cannot read folder ({exc.strerror}); its files are skipped"))

    for raw in paths:
        p = Path(raw)
        try:
            is_dir, exists = p.is_dir(), p.exists()
        except OSError as exc:  # e.g. a file inside a folder this user may not enter
            errors.append(AudioError(p, f"cannot access ({exc.strerror})"))
            continue
        if not exists:
            errors.append(AudioError(p, "no such file or directory"))
            continue
        if not is_dir:
            files.append(p)
            continue
        found = sorted(
            Path(folder) / name
            for folder, _, names in os.walk(p, onerror=unreadable)
            for name in names
            if Path(name).suffix.lower() in AUDIO_EXTENSIONS and (Path(folder) / name).is_file()
        )
        if not found:
            errors.append(AudioError(p, "directory contains no audio files"))
        files.extend(found)
    return files, errors
