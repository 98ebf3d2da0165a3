"""Windows for calibrating and checking quantised exports, kept apart from each other.

Calibration windows set the int8 ranges; test windows judge the result. They
must not be the same windows, or the check flatters the model. With a user's
folder, files alternate between the two sets (a single file alternates window
offsets instead); with ``audio_windows`` every window of the given music
calibrates, cut exactly as ``genre-stream classify`` cuts it, and the check
uses other material; without either, both come from the project's own
synthetic pieces (``trainer.synth``) with disjoint seeds.

Every window is normalised as the model's inputs are (``normalization``, from its
metadata): int8 ranges set on another normalisation's values would be the ranges of
inputs the model never gets. Synthetic and folder windows stand alone (a piece, or a
circular shift of a clip), so each is normalised as the start of a stream
(``genre_stream.tracks.analysis.clip_window``); ``audio_windows`` normalises whole
tracks as ``classify`` does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from genre_stream.audio.decode import AudioError, find_audio_files, iter_audio, load_audio
from genre_stream.audio.frontend import MelFrontend
from genre_stream.model.info import NORMALIZATION
from genre_stream.tracks import TRACK_HOP_SECONDS
from genre_stream.tracks.analysis import clip_window, iter_windows

from .synth import synth_piece

log = logging.getLogger(__name__)

TEST_SEED_OFFSET = 100_000  # synthetic test pieces never share a seed with calibration pieces


@dataclass
class WindowSets:
    calibration: np.ndarray  # (N, frames, n_mels)
    test: np.ndarray
    source: str  # one line saying where the windows came from (stored in the model metadata)


def offset_windows(audio: np.ndarray, frontend: MelFrontend, count: int, phase: float = 0.0, normalization: str = NORMALIZATION) -> np.ndarray:
    """``count`` windows of a track looped end to start, starting at evenly spread offsets.

    Looping lets a 5 s or a 30 s clip give as many distinct windows as asked for,
    each a real stretch of the music (a circular shift), never padding.
    """
    c = frontend.config
    length = c.window_samples
    out = []
    for i in range(count):
        offset = int(((i + phase) / count) * audio.size) % audio.size
        reps = int(np.ceil((offset + length) / audio.size)) + 1
        out.append(clip_window(np.tile(audio, reps)[offset : offset + length], frontend, normalization))
    return _stack(out, frontend)


def synthetic_sets(frontend: MelFrontend, n_calibration: int, n_test: int, normalization: str = NORMALIZATION) -> WindowSets:
    cal = _stack([clip_window(synth_piece(seed), frontend, normalization) for seed in range(n_calibration)], frontend)
    test = _stack([clip_window(synth_piece(TEST_SEED_OFFSET + seed), frontend, normalization) for seed in range(n_test)], frontend)
    return WindowSets(cal, test, f"trainer.synth pieces: calibration seeds 0..{n_calibration - 1}, test seeds {TEST_SEED_OFFSET}..{TEST_SEED_OFFSET + n_test - 1}")


def _stack(windows: list[np.ndarray], frontend: MelFrontend) -> np.ndarray:
    c = frontend.config
    return np.stack(windows) if windows else np.zeros((0, c.window_frames, c.n_mels), np.float32)


def folder_test_windows(folder: Path, frontend: MelFrontend, per_file: int, normalization: str = NORMALIZATION) -> tuple[np.ndarray, str]:
    """``per_file`` windows of every readable file under ``folder``: a check set only."""
    tracks = _read_folder(folder, frontend)
    windows = np.concatenate([offset_windows(a, frontend, per_file, 0.25, normalization) for _, a in tracks])
    return windows, f"{folder}: {len(tracks)} files x {per_file} offsets"


def _read_folder(folder: Path, frontend: MelFrontend) -> list[tuple[Path, np.ndarray]]:
    files, errors = find_audio_files([folder])
    for err in errors:
        log.warning("skipping %s", err)
    tracks: list[tuple[Path, np.ndarray]] = []
    for path in files:
        try:
            audio = load_audio(path, frontend.config.sample_rate)
        except AudioError as exc:
            log.warning("skipping %s", exc)
            continue
        if audio.size and np.any(audio):
            tracks.append((path, audio))
        else:
            log.warning("skipping %s: silent or empty", path)
    if not tracks:
        raise ValueError(f"{folder}: no readable, non-silent audio files")
    return tracks


def folder_sets(folder: Path, frontend: MelFrontend, n_calibration: int, n_test: int, normalization: str = NORMALIZATION) -> WindowSets:
    """Windows from the audio files under ``folder``; files alternate between calibration and test."""
    tracks = _read_folder(folder, frontend)
    if len(tracks) == 1:
        audio = tracks[0][1]
        cal = offset_windows(audio, frontend, n_calibration, 0.0, normalization)
        test = offset_windows(audio, frontend, n_test, 0.5, normalization)
        return WindowSets(cal, test, f"{folder}: 1 file, calibration and test at interleaved offsets")
    cal_tracks, test_tracks = tracks[0::2], tracks[1::2]
    cal = _spread_over(cal_tracks, frontend, n_calibration, normalization)
    test = _spread_over(test_tracks, frontend, n_test, normalization)
    return WindowSets(cal, test, f"{folder}: {len(cal_tracks)} calibration files, {len(test_tracks)} other test files")


def _spread_over(tracks: list[tuple[Path, np.ndarray]], frontend: MelFrontend, total: int, normalization: str) -> np.ndarray:
    per = [total // len(tracks) + (1 if i < total % len(tracks) else 0) for i in range(len(tracks))]
    return np.concatenate([offset_windows(a, frontend, max(1, n), normalization=normalization) for (_, a), n in zip(tracks, per)])


def audio_windows(paths: list[Path], frontend: MelFrontend, hop_seconds: float = TRACK_HOP_SECONDS, normalization: str = NORMALIZATION) -> tuple[np.ndarray, str]:
    """Every window ``genre-stream classify`` would cut from the music under ``paths`` (files or folders).

    Calibrating on the windows the runtime actually sees (real music, the same
    30 s windows at the same hop, a clip shorter than a window looped) gives the
    int8 ranges of real activations instead of those of synthetic pieces.
    """
    files, errors = find_audio_files(list(paths))
    for err in errors:
        log.warning("skipping %s", err)
    windows: list[np.ndarray] = []
    used = 0
    for path in files:
        try:
            found = [w for _, _, w in iter_windows(iter_audio(path, frontend.config.sample_rate), frontend, hop_seconds, normalization)]
        except AudioError as exc:
            log.warning("skipping %s", exc)
            continue
        if not found:
            log.warning("skipping %s: no window (empty)", path)
            continue
        windows += found
        used += 1
    if not windows:
        raise ValueError(f"no readable audio among {', '.join(str(p) for p in paths)}")
    return _stack(windows, frontend), f"{used} real audio files, {len(windows)} windows cut as classify cuts them (hop {hop_seconds:g} s)"
