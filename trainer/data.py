"""Labelled audio -> an on-disk cache of mel power frames that training reads by memory map.

Decoding and the mel transform cost far more than a training step on short windows,
so ``prepare`` does them once: every clip goes through the runtime's own frontend
(``genre_stream.audio.frontend``) and its power frames are appended to a flat binary shard.
``manifest.json`` maps each clip to (shard, offset, frames) and records the file's
sha256, so running ``prepare`` again only decodes what is new or changed and drops
what disappeared. Normalisation belongs to the model, not to the data, and is therefore
applied when a window is read (``Cache.window``, by the model's ``trainer.inputs.ModelInput``),
never stored.

A clip shorter than the cache's window is looped to the window length first, exactly
as ``classify`` does, so a model never sees a short clip differently at run time.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from genre_stream.audio.decode import AUDIO_EXTENSIONS, AudioError, load_audio
from genre_stream.audio.frontend import FrontendConfig, MelFrontend, loop_to_length
from genre_stream.common.fsutil import atomic_path, sha256_file

from .frontend_torch import TorchMelFrontend
from .inputs import ModelInput, TrackInputs

log = logging.getLogger(__name__)

FORMAT = "genre-trainer-cache/1"
MANIFEST = "manifest.json"
SHARDS = "shards"
DTYPES = ("float32", "float16")


class DataError(ValueError):
    """Unusable training data; the message names the file, folder or label and why."""


@dataclass(frozen=True)
class Clip:
    """One labelled audio file found in a dataset."""

    path: Path
    label: str


@dataclass
class Entry:
    """One cached clip (or pitch-shifted copy) in the manifest."""

    path: str
    label: str
    sha256: str
    pitch: int
    shard: str
    offset: int
    frames: int
    seconds: float
    looped: bool

    @property
    def key(self) -> tuple[str, int]:
        return (self.path, self.pitch)


@dataclass
class PrepareConfig:
    """What a cache is built with; a change of any of these invalidates cached frames."""

    frontend: FrontendConfig = field(default_factory=FrontendConfig)
    dtype: str = "float32"
    pitch_shifts: tuple[int, ...] = ()

    def fingerprint(self) -> dict[str, Any]:
        return {"frontend": self.frontend.to_dict(), "dtype": self.dtype}


@dataclass
class PrepareReport:
    """What a prepare run did, for the CLI summary and the tests."""

    decoded: int = 0
    reused: int = 0
    removed: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    audio_seconds: float = 0.0


# ---------------------------------------------------------------- finding data


def _csv_clips(path: Path) -> list[Clip]:
    """A CSV of ``path,label`` rows (header optional); relative paths are relative to the CSV."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read CSV manifest ({exc})") from exc
    clips: list[Clip] = []
    missing: list[str] = []
    for lineno, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or all(not c.strip() for c in row):
            continue
        if lineno == 1 and [c.strip().lower() for c in row[:2]] == ["path", "label"]:
            continue
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise DataError(f"{path}:{lineno}: expected 'path,label', got {','.join(row)!r}")
        file = Path(row[0].strip()).expanduser()
        if not file.is_absolute():
            file = path.parent / file
        if not file.is_file():
            missing.append(f"{path}:{lineno}: {file}")
        clips.append(Clip(file, row[1].strip()))
    if missing:
        shown = "\n  ".join(missing[:10])
        more = f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise DataError(f"{path}: {len(missing)} file(s) named in the manifest do not exist:\n  {shown}{more}")
    return clips


def _folder_clips(root: Path) -> list[Clip]:
    """Folder-per-label; a GTZAN download (``genres/<label>/...``) is found one level down."""
    if (root / "genres").is_dir():
        root = root / "genres"
    label_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not label_dirs:
        raise DataError(f"{root}: no label folders (expected {root}/<label>/<audio files>)")
    clips: list[Clip] = []
    for d in label_dirs:
        files = sorted(f for f in d.rglob("*") if f.is_file() and f.suffix.lower() in AUDIO_EXTENSIONS)
        if not files:
            log.warning("%s: label folder has no audio files; label %r ignored", d, d.name)
        clips.extend(Clip(f, d.name) for f in files)
    return clips


def find_clips(data: str | Path) -> list[Clip]:
    """List labelled clips of a CSV manifest or a folder tree; raises ``DataError`` when unusable."""
    data = Path(data)
    if not data.exists():
        raise DataError(f"{data}: no such file or folder")
    clips = _csv_clips(data) if data.is_file() else _folder_clips(data)
    seen: dict[Path, str] = {}
    unique: list[Clip] = []
    for clip in clips:
        key = clip.path.resolve()
        if key in seen:
            if seen[key] != clip.label:
                raise DataError(f"{data}: {clip.path} is labelled both {seen[key]!r} and {clip.label!r}")
            continue
        seen[key] = clip.label
        unique.append(clip)
    clips = unique
    if not clips:
        raise DataError(f"{data}: no audio files found")
    check_labels(Counter(c.label for c in clips), str(data))
    return clips


def check_labels(counts: Counter[str] | dict[str, int], where: str) -> None:
    """A classifier needs two classes at least; say which one was found when it is not so."""
    if len(counts) < 2:
        only = ", ".join(f"{k!r} ({v} files)" for k, v in counts.items()) or "none"
        raise DataError(f"{where}: found one label only ({only}); a classifier needs at least two")


# ---------------------------------------------------------------- the cache


def encode(power: np.ndarray, dtype: str) -> np.ndarray:
    """Frames as stored: float32 power as is; float16 as dB, because power spans ~10 orders of
    magnitude (float16 would overflow loud bins and flush quiet ones), while dB fits with 0.06 dB steps."""
    if dtype == "float16":
        return (10.0 * np.log10(np.maximum(power, 1e-10))).astype(np.float16)
    return np.asarray(power, dtype=np.float32)


def decode(stored: np.ndarray) -> np.ndarray:
    """Stored frames back to float32 power, so the runtime's normalisations apply unchanged."""
    if stored.dtype == np.float16:
        return np.power(10.0, stored.astype(np.float32) / 10.0, dtype=np.float32)
    return np.array(stored, dtype=np.float32)


class Cache:
    """Read access to a prepared cache: entries, labels and memory-mapped frames."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        path = self.root / MANIFEST
        if not path.is_file():
            raise DataError(f"{self.root}: not a prepared cache (no {MANIFEST}); run `genre-trainer prepare` first")
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"{path}: unreadable cache manifest ({exc})") from exc
        if data.get("format") != FORMAT:
            raise DataError(f"{path}: not a genre-trainer cache manifest (format {data.get('format')!r}, expected {FORMAT!r})")
        self.manifest = data
        self.frontend = FrontendConfig.from_dict(data["frontend"])
        self.dtype = np.dtype(data["dtype"])
        self.entries = [Entry(**e) for e in data["entries"]]
        self.skipped: list[dict[str, str]] = list(data.get("skipped", []))
        self.labels = sorted({e.label for e in self.entries})
        self._maps: dict[str, np.ndarray] = {}
        self._inputs: dict[ModelInput, TrackInputs] = {}
        for name, frames in data["shards"].items():
            shard = self.root / SHARDS / name
            expected = frames * self.frontend.n_mels * self.dtype.itemsize
            if not shard.is_file() or shard.stat().st_size != expected:
                raise DataError(f"{shard}: cache shard missing or truncated; run `genre-trainer prepare` again")

    @property
    def window_frames(self) -> int:
        return self.frontend.window_frames

    def originals(self) -> list[int]:
        """Indices of the un-shifted clips: the units that splits and evaluation count."""
        return [i for i, e in enumerate(self.entries) if e.pitch == 0]

    def copies_of(self) -> dict[str, list[int]]:
        """Entry indices per source path, pitch-shifted copies included."""
        out: dict[str, list[int]] = {}
        for i, e in enumerate(self.entries):
            out.setdefault(e.path, []).append(i)
        return out

    def _shard(self, name: str) -> np.ndarray:
        if name not in self._maps:
            frames = int(self.manifest["shards"][name])
            self._maps[name] = np.memmap(self.root / SHARDS / name, dtype=self.dtype, mode="r", shape=(frames, self.frontend.n_mels))
        return self._maps[name]

    def power(self, index: int, start: int = 0, length: int | None = None) -> np.ndarray:
        """Power frames of entry ``index`` (all, or ``length`` from ``start``) as float32."""
        e = self.entries[index]
        stop = e.frames if length is None else start + length
        if start < 0 or stop > e.frames:
            raise IndexError(f"frames {start}:{stop} outside {e.path} ({e.frames} frames)")
        return decode(self._shard(e.shard)[e.offset + start : e.offset + stop])

    def window(self, index: int, start: int, length: int, model_input: ModelInput) -> np.ndarray:
        """The model input (length, n_mels) at frame ``start`` of entry ``index``, normalised on read as the runtime would."""
        if model_input not in self._inputs:
            self._inputs[model_input] = TrackInputs(model_input, self.power)
        return self._inputs[model_input].window(index, start, length)


def _write_manifest(root: Path, config: PrepareConfig, source: str, entries: list[Entry], skipped: list[dict[str, str]], shards: dict[str, int]) -> None:
    data = {
        "format": FORMAT,
        "source": source,
        "frontend": config.frontend.to_dict(),
        "dtype": config.dtype,
        "pitch_shifts": list(config.pitch_shifts),
        "labels": sorted({e.label for e in entries}),
        "shards": shards,
        "entries": [asdict(e) for e in entries],
        "skipped": skipped,
    }
    with atomic_path(root / MANIFEST) as tmp:
        tmp.write_text(json.dumps(data, indent=1))


def _old_entries(root: Path, config: PrepareConfig) -> tuple[list[Entry], dict[str, int]]:
    """Entries of an existing cache that are still valid for ``config`` (none if its frontend differs)."""
    if not (root / MANIFEST).exists():
        return [], {}
    try:
        cache = Cache(root)
    except DataError as exc:
        log.warning("%s: existing cache unusable, rebuilding it (%s)", root, exc)
        return [], {}
    old = {"frontend": cache.frontend.to_dict(), "dtype": str(cache.dtype)}
    if old != config.fingerprint():
        log.warning("%s: cache was built with other frontend/dtype settings; rebuilding it", root)
        return [], {}
    return cache.entries, dict(cache.manifest["shards"])


def decode_clip(path: Path, frontend: MelFrontend, pitch: int = 0) -> tuple[np.ndarray, float, bool]:
    """(power frames, seconds, looped) of one file; raises ``AudioError``."""
    from .augment import pitch_shift

    c = frontend.config
    audio = load_audio(path, c.sample_rate)
    seconds = audio.size / c.sample_rate
    if pitch:
        audio = pitch_shift(audio, c.sample_rate, pitch)
    looped = audio.size < c.window_samples
    if looped:
        return frontend.power(loop_to_length(audio, c.window_samples))[: c.window_frames], seconds, True
    return frontend.power(audio), seconds, False


def prepare(
    data: str | Path,
    out: str | Path,
    config: PrepareConfig | None = None,
    progress: Callable[[Iterable[Clip]], Iterable[Clip]] | None = None,
) -> PrepareReport:
    """Build or update the cache at ``out`` from ``data``; only new or changed files are decoded.

    The new frames go to a fresh shard written beside its final name and renamed, and
    the manifest is replaced last, so an interrupted run leaves the previous cache intact.
    """
    config = config or PrepareConfig()
    if config.dtype not in DTYPES:
        raise DataError(f"dtype {config.dtype!r} not supported; choose one of {', '.join(DTYPES)}")
    clips = find_clips(data)  # validates before anything is written
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise DataError(f"{root}: exists and is not a folder")
    created = not root.exists()
    (root / SHARDS).mkdir(parents=True, exist_ok=True)
    old_entries, old_shards = _old_entries(root, config)
    old = {e.key: e for e in old_entries}
    frontend = TorchMelFrontend(config.frontend)
    pitches = [0] + [p for p in config.pitch_shifts if p != 0]
    report = PrepareReport()
    entries: list[Entry] = []
    shard_name = f"{uuid.uuid4().hex}.{config.dtype}"
    shard_path = root / SHARDS / shard_name
    tmp = shard_path.with_name(f".{shard_name}.tmp")
    written = 0
    iterable: Iterable[Clip] = progress(clips) if progress else clips
    try:
        with open(tmp, "wb") as fh:
            for clip in iterable:
                written += _prepare_clip(clip, pitches, frontend, config, old, entries, report, fh, shard_name, written)
            fh.flush()
            os.fsync(fh.fileno())
        if not entries:
            raise DataError(f"{data}: none of the {len(clips)} files could be decoded (see the warnings above)")
        check_labels(Counter(e.label for e in entries if e.pitch == 0), f"{data} (after skipping unreadable files)")
        if written:
            os.replace(tmp, shard_path)
    except BaseException:
        if created:  # a failed first run leaves no folder that looks like a cache
            tmp.unlink(missing_ok=True)
            shutil.rmtree(root, ignore_errors=True)
        raise
    finally:
        tmp.unlink(missing_ok=True)
    shards = {e.shard: old_shards.get(e.shard, written) for e in entries}
    report.removed = len({e.key for e in old_entries} - {e.key for e in entries})
    _write_manifest(root, config, str(data), entries, report.skipped, shards)
    for stale in (root / SHARDS).iterdir():
        if stale.name not in shards:
            stale.unlink(missing_ok=True)
    log.info("prepared %s: %d decoded, %d reused, %d removed, %d skipped", root, report.decoded, report.reused, report.removed, len(report.skipped))
    return report


def _prepare_clip(
    clip: Clip,
    pitches: list[int],
    frontend: MelFrontend,
    config: PrepareConfig,
    old: dict[tuple[str, int], Entry],
    entries: list[Entry],
    report: PrepareReport,
    fh: Any,
    shard_name: str,
    offset: int,
) -> int:
    """Reuse or decode one clip and its pitch-shifted copies; return the frames appended to ``fh``."""
    key_path = str(clip.path.resolve())
    try:
        digest = sha256_file(clip.path)
    except OSError as exc:
        report.skipped.append({"path": str(clip.path), "reason": f"cannot read ({exc.strerror})"})
        return 0
    appended = 0
    for pitch in pitches:
        prev = old.get((key_path, pitch))
        if prev is not None and prev.sha256 == digest and prev.label == clip.label:
            entries.append(prev)
            report.reused += 1
            continue
        try:
            power, seconds, looped = decode_clip(clip.path, frontend, pitch)
        except AudioError as exc:
            log.warning("skipping %s", exc)
            report.skipped.append({"path": str(clip.path), "reason": exc.reason})
            return appended
        fh.write(encode(power, config.dtype).tobytes())
        n = int(power.shape[0])
        entries.append(Entry(key_path, clip.label, digest, pitch, shard_name, offset + appended, n, round(seconds, 3), looped))
        appended += n
        report.decoded += 1
        report.audio_seconds += seconds
    return appended
