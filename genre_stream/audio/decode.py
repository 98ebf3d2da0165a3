"""Decoding files to mono float32 at the model's rate, block by block, with errors a user can act on.

libsndfile (soundfile) reads wav/flac/ogg/mp3/au/aiff directly; anything it
refuses is handed to ffmpeg when it is installed. Files are decoded in blocks of
``BLOCK_SECONDS`` and resampled as a stream, so a three-hour recording costs the
memory of a ten-minute one. Every failure becomes an ``AudioError`` naming the
file and the reason, so one bad file never takes a batch down with a traceback.

A watch folder tags its files one after another, so a hostile file must not hold up the
others: what one file may cost is bounded here. Sample rates outside ``MIN_RATE``-``MAX_RATE``
are refused (a 20 KB WAV at 1 Hz, resampled up to ``SAMPLE_RATE``, took 76 s and 846 MB), a block never holds
more than ``BLOCK_VALUES`` samples whatever the channel count, a file may not decode to more audio
than its bytes can honestly hold (``max_seconds``), and ffmpeg is given up on when it stalls.
MP3 lengths come from the frames, not from a header that may lie (``mpeg.py``), and broken
samples in float files are repaired where they are (``sanitize.FileRepair``).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import re
import select
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

from . import mpeg
from .frontend import SAMPLE_RATE
from .resample import StreamResampler
from .sanitize import FileRepair, second_peaks

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".oga", ".mp3", ".au", ".snd", ".aif", ".aiff", ".aifc"})
BLOCK_SECONDS = 10.0  # decoding unit: what one block of a file may cost in memory, whatever its length
BLOCK_VALUES = 1 << 20  # ...and at most this many samples over all its channels (a WAV may claim 1024 channels)
# Rates of audio that can be music for the model: telephone speech is 8 kHz, the highest studio rate 384 kHz.
# Below, resampling up to SAMPLE_RATE multiplies the data (by SAMPLE_RATE at 1 Hz); above, no audio format is in use.
MIN_RATE, MAX_RATE = 4000, 384000
# Below 1 kbit/s no codec carries music (Opus starts at 6, MP3 at 8): a file that decodes to more
# audio than that is a forged header, a decompression bomb or hours of digital silence. The floor
# lets tiny files through, and bounds what any one file can cost (150x real time: 4 s of analysis).
MIN_BYTES_PER_SECOND = 125
MIN_BUDGET_SECONDS = 600.0
FFMPEG_STALL_SECONDS = 60.0  # ffmpeg silent this long (no header, no samples) is given up on


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


def max_seconds(size: int) -> float:
    """The most audio (seconds) a file of ``size`` bytes is allowed to decode to (see ``MIN_BYTES_PER_SECOND``)."""
    return max(MIN_BUDGET_SECONDS, size / MIN_BYTES_PER_SECOND)


def too_long(path: str | Path, size: int, claim: str) -> AudioError:
    """The error for a file that would decode to more than ``max_seconds(size)``; ``claim`` says how it was found."""
    return AudioError(path, f"{claim} from {size} bytes, more than a file of that size can honestly hold (under "
                            f"{MIN_BYTES_PER_SECOND * 8 / 1000:g} kbit/s): a forged header, a decompression bomb or hours "
                            "of digital silence; refused so that it cannot hold up other files")


def check_rate(path: str | Path, rate: int) -> None:
    """Refuse a sample rate no music file has, before any sample is decoded (``AudioError`` saying why)."""
    if not MIN_RATE <= rate <= MAX_RATE:
        raise AudioError(path, f"sample rate {rate} Hz is outside {MIN_RATE}-{MAX_RATE} Hz: not music audio that can be "
                               "classified (a damaged or forged header?)")


_FFMPEG_AUDIO_RATE = re.compile(r"Stream #[^\n]*?: Audio: [^\n]*?, (\d+) Hz")


def _ffmpeg_input_rate(ffmpeg: str, path: Path) -> int | None:
    """The rate of the first audio stream as ffmpeg reads the header (``ffmpeg -i``: no decoding), None if unknown."""
    try:
        probe = subprocess.run([ffmpeg, "-hide_banner", "-nostdin", "-i", str(path)], stdin=subprocess.DEVNULL,
                               capture_output=True, timeout=FFMPEG_STALL_SECONDS)
    except subprocess.TimeoutExpired as exc:
        raise AudioError(path, f"ffmpeg could not read its header in {FFMPEG_STALL_SECONDS:g} s") from exc
    except OSError as exc:
        log.debug("ffmpeg probe of %s failed: %s", path, exc)
        return None
    found = _FFMPEG_AUDIO_RATE.search(probe.stderr.decode(errors="replace"))
    return int(found.group(1)) if found else None


def _read_block(path: Path, fd: int, size: int) -> bytes:
    """Up to ``size`` bytes from ffmpeg's stdout (less only at its end), giving up if ffmpeg stalls."""
    chunks: list[bytes] = []
    got = 0
    while got < size:
        ready, _, _ = select.select([fd], [], [], FFMPEG_STALL_SECONDS)
        if not ready:
            raise AudioError(path, f"ffmpeg produced no audio for {FFMPEG_STALL_SECONDS:g} s; given up")
        chunk = os.read(fd, size - got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _ffmpeg_blocks(path: Path, sr: int, block_samples: int) -> Iterator[np.ndarray]:
    """Blocks ffmpeg decodes (down-mixed and resampled by ffmpeg), repaired like libsndfile's."""
    ffmpeg = ffmpeg_executable()
    if ffmpeg is None:
        raise AudioError(path, "format not readable by libsndfile and no ffmpeg was found")
    rate = _ffmpeg_input_rate(ffmpeg, path)
    if rate is not None:
        check_rate(path, rate)
    cmd = [ffmpeg, "-nostdin", "-v", "error", "-i", str(path), "-vn", "-f", "f32le", "-rematrix_maxval", "1.0", "-ac", "1",
           *ffmpeg_resample_args(ffmpeg, sr), "-"]
    fix = FileRepair(sr)  # the level is learnt as the blocks come: ffmpeg's output cannot be read twice
    with tempfile.TemporaryFile() as errors:  # a file, not a pipe: ffmpeg can never block on it
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors, bufsize=0)
        assert proc.stdout is not None
        try:
            while True:
                data = _read_block(path, proc.stdout.fileno(), block_samples * 4)
                if not data:
                    break
                usable = len(data) - len(data) % 4
                yield fix.repair(fix.scale(np.frombuffer(data[:usable], dtype="<f4").astype(np.float32)))
        finally:
            if proc.poll() is None:
                proc.kill()
            status = proc.wait()
            proc.stdout.close()
        if status != 0:
            errors.seek(0)
            msg = errors.read().decode(errors="replace").strip().splitlines()
            raise AudioError(path, f"not decodable audio ({msg[-1] if msg else 'ffmpeg failed'})")
    if summary := fix.summary():
        log.warning("%s: %s", path, summary)


def _header_frames(handle: sf.SoundFile) -> int:
    """The frames libsndfile says the file holds, 0 when unknown (a FLAC streamed without its total: 2**63 - 1)."""
    return int(handle.frames) if 0 < handle.frames < sys.maxsize else 0


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
    return _header_frames(handle)


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


def _float_file_peaks(handle: sf.SoundFile, block: int) -> list[float] | None:
    """The peak of every second of a float file (a first pass, ``sanitize.second_peaks``); None for other files.

    Only float samples can be NaN, Inf or absurd (1e18, 1e300 were seen); integer PCM and the lossy
    decoders stay near full scale. Knowing the whole file's level before its first sample is used
    lets ``FileRepair`` tell a file that is too loud as a whole (scaled down) from one broken
    sample in normal music (brought down where it is, the rest untouched).
    """
    if handle.subtype not in ("FLOAT", "DOUBLE"):
        return None
    peaks: list[float] = []
    while (data := handle.read(block, dtype="float64", always_2d=True)).size:
        peaks += second_peaks(data, int(handle.samplerate))
    handle.seek(0)
    return peaks


def _soundfile_blocks(path: Path, handle: sf.SoundFile, sr: int) -> Iterator[np.ndarray]:
    """Blocks of a file libsndfile opened: repaired, down-mixed and resampled as one stream."""
    with handle:
        declared = _declared_frames(path, handle)
        native = int(handle.samplerate)
        resampler = StreamResampler(native, sr)
        block = max(1, min(int(BLOCK_SECONDS * native), BLOCK_VALUES // max(1, handle.channels)))
        peaks = _float_file_peaks(handle, block)
        fix = FileRepair(native, peaks)
        dtype = "float32" if peaks is None else "float64"  # 1e300 must be scaled before it is narrowed
        read = 0
        while True:
            try:
                with _mpg123_notes_silenced() if handle.format == "MP3" else contextlib.nullcontext():
                    data = handle.read(block, dtype=dtype, always_2d=True)
            except (sf.LibsndfileError, RuntimeError) as exc:
                raise AudioError(path, f"corrupt or truncated audio data ({exc})") from exc
            if data.shape[0] == 0:
                break
            read += data.shape[0]
            yield resampler.push(fix.repair(to_mono(fix.scale(data))))
        if declared and declared - read > _truncation_slack(handle, declared):
            raise AudioError(
                path,
                f"truncated: the header promises {declared / native:.1f} s, only {read / native:.1f} s are present",
            )
        if summary := fix.summary():
            log.warning("%s: %s", path, summary)
        yield resampler.flush()


def _mp3_header_short(path: Path, handle: sf.SoundFile) -> str | None:
    """Why libsndfile would stop before an MP3's real end (its Xing/VBRI header or estimate says less than
    the frames hold), or None. A shortfall is the truncation check's business, not this one's."""
    real = mpeg.audio_seconds(path)
    said = _header_frames(handle) / handle.samplerate
    if real is None or real - said <= max(0.05 * real, 1.0):
        return None
    return f"its header says {said:.1f} s, its frames hold {real:.1f} s"


def _open_blocks(path: Path, sr: int, size: int) -> Iterator[np.ndarray]:
    """The blocks of ``path`` from the decoder that can read all of it, with the header checked first."""
    try:
        with _mpg123_notes_silenced():  # libsndfile probes MP3 frames when it opens a file
            handle = sf.SoundFile(bytes(path))  # bytes: names that are not UTF-8 open too
    except sf.LibsndfileError as exc:
        log.debug("libsndfile cannot open %s (%s); trying ffmpeg", path, exc)
        return _ffmpeg_blocks(path, sr, max(1, int(BLOCK_SECONDS * sr)))
    except PermissionError as exc:
        raise AudioError(path, "permission denied") from exc
    except (RuntimeError, OSError) as exc:
        raise AudioError(path, f"read failed ({exc})") from exc
    try:
        check_rate(path, int(handle.samplerate))
        said = _header_frames(handle) / handle.samplerate
        if said > max_seconds(size):
            raise too_long(path, size, f"its header promises {said:.0f} s of audio")
        short = _mp3_header_short(path, handle) if handle.format == "MP3" else None
    except AudioError:
        handle.close()
        raise
    if short is None:
        return _soundfile_blocks(path, handle, sr)
    handle.close()
    if ffmpeg_executable() is None:
        raise AudioError(path, f"inconsistent MP3: {short}; install ffmpeg to decode all of it")
    log.warning("%s: inconsistent MP3: %s; decoded with ffmpeg to the end of its frames", path, short)
    return _ffmpeg_blocks(path, sr, max(1, int(BLOCK_SECONDS * sr)))


def iter_audio(path: str | Path, sr: int = SAMPLE_RATE) -> Iterator[np.ndarray]:
    """Decode a file to blocks of mono float32 at ``sr``; raises ``AudioError`` with the reason.

    Memory is one block, whatever the file's length, and the work is bounded by the file's size
    (``max_seconds``): a forged header cannot make a small file decode for hours. The error can come after some
    blocks were yielded (a file found truncated or corrupt part way through), so a
    caller must treat everything it made of the earlier blocks as unfinished.
    """
    path = Path(path)
    if not path.exists():
        raise AudioError(path, "no such file")
    if path.is_dir():
        raise AudioError(path, "is a directory")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise AudioError(path, f"cannot stat ({exc.strerror})") from exc
    if size == 0:
        raise AudioError(path, "empty file")
    blocks = _open_blocks(path, sr, size)
    limit = max_seconds(size)
    total = 0
    with contextlib.closing(blocks):  # an early exit (the limit, the caller) stops ffmpeg and closes the file now
        for block in blocks:
            if block.size == 0:
                continue
            total += block.size
            if total > limit * sr:
                raise too_long(path, size, f"it decodes to more than {limit:.0f} s of audio")
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
