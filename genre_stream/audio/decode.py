"""Decoding files to mono float32 at the model's rate, block by block, with errors a user can act on.

libsndfile (soundfile) reads wav/flac/ogg/mp3/au/aiff directly; anything it
refuses is handed to ffmpeg when it is installed. Files are decoded in blocks of
``BLOCK_SECONDS`` and resampled as a stream, so a three-hour recording costs the
memory of a ten-minute one. Every failure becomes an ``AudioError`` naming the
file and the reason, so one bad file never takes a batch down with a traceback.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from .frontend import SAMPLE_RATE
from .resample import StreamResampler
from .sanitize import LOUD

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".oga", ".mp3", ".au", ".snd", ".aif", ".aiff", ".aifc"})
BLOCK_SECONDS = 10.0  # decoding unit: what one block of a file may cost in memory, whatever its length


class AudioError(Exception):
    """A file that could not be decoded; ``str()`` is the one-line message for the user."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def to_mono(audio: np.ndarray) -> np.ndarray:
    """Average the channels of (frames, channels) audio; 1-D input is returned as is.

    Channel columns are added one by one rather than with ``mean(axis=1)``: numpy reduces a
    short inner axis element by element, which made this ~10 % of a 10-minute stereo
    ``classify``; for stereo the result is bit for bit the same ((a + b) / 2 in float32).
    """
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 2:
        return audio
    mono = audio[:, 0].copy()
    for channel in range(1, audio.shape[1]):
        mono += audio[:, channel]
    if audio.shape[1] > 1:
        mono *= np.float32(1.0 / audio.shape[1])
    return mono


def ffmpeg_executable() -> str | None:
    """The system ffmpeg if installed, else the one of imageio-ffmpeg (the [ffmpeg] extra) if installed."""
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        return None


@functools.lru_cache(maxsize=4)
def ffmpeg_resample_args(exe: str, rate: int) -> tuple[str, ...]:
    """Output options that make ffmpeg resample with libsoxr at soxr's "HQ" precision.

    The in-process resampler is soxr too (``resample.py``), so a file gives the same
    samples whether libsndfile or ffmpeg decodes it. An ffmpeg built without libsoxr
    falls back to its own resampler, which is said once in the log.
    """
    try:
        conf = subprocess.run([exe, "-hide_banner", "-buildconf"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        conf = ""
    if "--enable-libsoxr" in conf:
        # The filter does the down-mix too, so it needs rematrix_maxval itself (the channel mean
        # like to_mono; ffmpeg's default mixes stereo 1.41x louder).
        return ("-af", "aresample=resampler=soxr:precision=20:rematrix_maxval=1.0", "-ar", str(rate))
    log.info("%s was built without libsoxr; it resamples with its own filter", exe)
    return ("-ar", str(rate))


def _ffmpeg_blocks(path: Path, sr: int, block_samples: int) -> Iterator[np.ndarray]:
    ffmpeg = ffmpeg_executable()
    if ffmpeg is None:
        raise AudioError(path, "format not readable by libsndfile and no ffmpeg was found")
    cmd = [ffmpeg, "-nostdin", "-v", "error", "-i", str(path), "-vn", "-f", "f32le", "-rematrix_maxval", "1.0", "-ac", "1",
           *ffmpeg_resample_args(ffmpeg, sr), "-"]
    with tempfile.TemporaryFile() as errors:  # a file, not a pipe: ffmpeg can never block on it
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors)
        assert proc.stdout is not None
        try:
            while True:
                data = proc.stdout.read(block_samples * 4)
                if not data:
                    break
                usable = len(data) - len(data) % 4
                yield np.frombuffer(data[:usable], dtype="<f4").astype(np.float32)
        finally:
            if proc.poll() is None:
                proc.kill()
            status = proc.wait()
            proc.stdout.close()
        if status != 0:
            errors.seek(0)
            msg = errors.read().decode(errors="replace").strip().splitlines()
            raise AudioError(path, f"not decodable audio ({msg[-1] if msg else 'ffmpeg failed'})")


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


_NATIVE_STDERR_LOCK = threading.Lock()
_LIBC = ctypes.CDLL(None)
_MPG123_NOTES = (b"Note: ", b"[src/libmpg123/")  # resync notes; decoder diagnostics with the source position


@contextlib.contextmanager
def _mpg123_notes_silenced() -> Iterator[None]:
    """Drop the lines libmpg123 (libsndfile's MP3 decoder) prints straight to stderr.

    "Note: Illegal Audio-MPEG-Header", "Note: Trying to resync", "[src/libmpg123/layer3.c:...]
    error: dequantization failed!" are printed by the C library on fd 2 for any MP3 with junk,
    damaged frames or tags in odd places, while it recovers by itself; they cut through progress
    bars and say nothing the user can act on (a file that really fails raises). The C
    library cannot be told to keep quiet through libsndfile, so fd 2 is pointed at a
    temporary file for the duration of the call and everything that is not such a note is
    written back afterwards; nothing else written meanwhile (another thread's log line) is lost.
    """
    with _NATIVE_STDERR_LOCK, tempfile.TemporaryFile() as captured:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            _LIBC.fflush(None)  # the notes may sit in C stdio's buffer (stderr is buffered when not a terminal here)
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().splitlines(keepends=True)
            kept = b"".join(line for line in lines if not line.startswith(_MPG123_NOTES))
            if kept:
                os.write(2, kept)
            if len(kept) < sum(map(len, lines)):
                log.debug("silenced %d libmpg123 note(s)", sum(line.startswith(_MPG123_NOTES) for line in lines))


def _truncation_slack(handle: sf.SoundFile, declared: int) -> float:
    """Frames that may be missing before a file counts as truncated.

    A WAV data chunk states its size exactly, so 1 % (and 50 ms) is plenty. Compressed
    formats only estimate it (an MP3's Xing/VBR header promised 32.5 s of a playable
    32.05 s file), so there the decoder's own errors decide and the header only catches
    files cut short by more than 5 % and a second.
    """
    if handle.format == "WAV":
        return 0.01 * declared + 0.05 * handle.samplerate
    return max(0.05 * declared, float(handle.samplerate))


_SUBTYPE_BYTES = {"PCM_U8": 1, "PCM_S8": 1, "PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "FLOAT": 4, "DOUBLE": 8}


def _float_file_scale(path: Path, handle: sf.SoundFile, block: int) -> float:
    """1, or 1/peak for a float file whose samples reach absurd magnitudes (1e18 was seen).

    Such values overflow the mel power to Inf and the probabilities to NaN. Scaling the
    whole file changes nothing else (every window is normalised to its own maximum), but
    a stream cannot know its peak ahead, so float files are scanned once first (integer
    PCM cannot exceed full scale). Non-finite samples are left for ``iter_audio`` to refuse.
    """
    if handle.subtype not in ("FLOAT", "DOUBLE"):
        return 1.0
    peak = 0.0
    while (data := handle.read(block, dtype="float64")).size:
        finite = data[np.isfinite(data)]
        peak = max(peak, float(np.max(np.abs(finite), initial=0.0)))
    handle.seek(0)
    if peak <= LOUD:
        return 1.0
    log.warning("%s: peak %g is far beyond full scale; scaled down to 1 before analysis", path, peak)
    return 1.0 / peak


def _soundfile_blocks(path: Path, handle: sf.SoundFile, sr: int) -> Iterator[np.ndarray]:
    """Blocks of a file libsndfile opened, down-mixed and resampled as one stream."""
    with handle:
        declared = _declared_frames(path, handle)
        native = int(handle.samplerate)
        resampler = StreamResampler(native, sr)
        block = max(1, int(BLOCK_SECONDS * native))
        scale = _float_file_scale(path, handle, block)
        read = 0
        while True:
            try:
                with _mpg123_notes_silenced() if handle.format == "MP3" else contextlib.nullcontext():
                    data = handle.read(block, dtype="float32", always_2d=True)
            except (sf.LibsndfileError, RuntimeError) as exc:
                raise AudioError(path, f"corrupt or truncated audio data ({exc})") from exc
            if data.shape[0] == 0:
                break
            read += data.shape[0]
            mono = to_mono(data)
            yield resampler.push(mono * np.float32(scale) if scale != 1.0 else mono)
        if declared and declared - read > _truncation_slack(handle, declared):
            raise AudioError(
                path,
                f"truncated: the header promises {declared / native:.1f} s, only {read / native:.1f} s are present",
            )
        yield resampler.flush()


def iter_audio(path: str | Path, sr: int = SAMPLE_RATE) -> Iterator[np.ndarray]:
    """Decode a file to blocks of mono float32 at ``sr``; raises ``AudioError`` with the reason.

    Memory is one block, whatever the file's length. The error can come after some
    blocks were yielded (a file found truncated or corrupt part way through), so a
    caller must treat everything it made of the earlier blocks as unfinished.
    """
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
        with _mpg123_notes_silenced():  # libsndfile probes MP3 frames when it opens a file
            handle = sf.SoundFile(bytes(path))  # bytes: names that are not UTF-8 open too
    except sf.LibsndfileError as exc:
        log.debug("libsndfile cannot open %s (%s); trying ffmpeg", path, exc)
        blocks = _ffmpeg_blocks(path, sr, max(1, int(BLOCK_SECONDS * sr)))
    except PermissionError as exc:
        raise AudioError(path, "permission denied") from exc
    except (RuntimeError, OSError) as exc:
        raise AudioError(path, f"read failed ({exc})") from exc
    else:
        blocks = _soundfile_blocks(path, handle, sr)
    total = 0
    for block in blocks:
        if block.size == 0:
            continue
        if not np.all(np.isfinite(block)):
            raise AudioError(path, "contains NaN or infinite samples")
        total += block.size
        yield block
    if total == 0:
        raise AudioError(path, "no audio samples (empty or truncated file)")


@dataclass(frozen=True)
class Tags:
    """Artist and title as the file's own tags give them ("" when it has none)."""

    artist: str = ""
    title: str = ""


def read_tags(path: str | Path) -> Tags:
    """The artist and title tags libsndfile reads: RIFF INFO (WAV), Vorbis comments (FLAC, OGG), AIFF
    annotations and ID3 (MP3, through libmpg123). Only read, never written; a file libsndfile
    cannot open (formats left to ffmpeg) or a tag that is not text gives empty tags, not an error:
    tags are a convenience for browsing, the analysis does not depend on them.
    """
    try:
        with _mpg123_notes_silenced(), sf.SoundFile(str(path)) as handle:
            meta = handle.copy_metadata()
    except (sf.LibsndfileError, RuntimeError, OSError, UnicodeDecodeError) as exc:
        log.debug("%s: no tags read (%s)", path, exc)
        return Tags()
    return Tags(artist=meta.get("artist", "").strip(), title=meta.get("title", "").strip())


def load_audio(path: str | Path, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Decode a whole file to mono float32 at ``sr`` (for clips; long files go through ``iter_audio``)."""
    return np.concatenate(list(iter_audio(path, sr)))


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
