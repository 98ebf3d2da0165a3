"""`genre-stream classify`: one-off classification of files and folders.

One bad file never takes the run down: each failure becomes one error line naming
the file and the reason, the rest are still classified, and the caller turns
"any failure" into exit status 1.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from ..audio.decode import AudioError, find_audio_files
from ..common.jsonsafe import display_path, dumps
from ..common.progress import Progress
from ..model.calibration import UncertaintyRule
from ..model.engine import Engine
from ..sinks.messages import State
from . import TRACK_HOP_SECONDS
from .analysis import TrackResult, WindowResult, analyse_file

log = logging.getLogger(__name__)


@dataclass
class ClassifyOptions:
    hop_seconds: float = TRACK_HOP_SECONDS
    top_k: int = 3
    as_json: bool = False
    with_windows: bool = False
    uncertainty: UncertaintyRule = UncertaintyRule()  # the CLI passes the model's rule (UncertaintyRule.for_model)
    model_choice: str = ""  # why this export runs (--model auto's reason), shown in --json


def result_to_dict(path: Path, result: TrackResult, options: ClassifyOptions) -> dict[str, Any]:
    labels = result.labels
    state, genre = result.verdict(options.uncertainty)
    data: dict[str, Any] = {
        "path": display_path(path),
        "duration": round(result.duration, 3),
        "genre": genre,
        "state": state,
        "confidence": round(result.confidence, 6),
        "top": [{"genre": g, "confidence": round(p, 6)} for g, p in result.top(options.top_k)],
        "probabilities": {lab: round(float(p), 6) for lab, p in zip(labels, result.probabilities)},
        "model": result.model,
        "precision": result.precision,
    }
    if result.not_music is not None:
        data["not_music"] = round(result.not_music, 6)  # P(not music): speech, talk or noise
    if options.model_choice:
        data["model_choice"] = options.model_choice
    if options.with_windows:
        data["windows"] = [
            {
                "start": round(w.start, 3),
                "end": round(w.end, 3),
                "probabilities": {lab: round(float(p), 6) for lab, p in zip(labels, w.probabilities)},
            }
            for w in result.windows
        ]
        data["segments"] = [{"start": round(g.start, 3), "end": round(g.end, 3), "genre": g.genre,
                             "confidence": round(g.confidence, 6), "windows": g.windows} for g in segments(result)]
    return data


def format_human(path: Path, result: TrackResult, options: ClassifyOptions) -> str:
    state = result.state(options.uncertainty)  # the daemon's rules (TrackResult.state)
    if state is State.SILENCE:
        tops = State.SILENCE.value
    elif state is State.NOT_MUSIC:  # speech, talk or noise by the model's gate
        tops = f"not music ({result.not_music * 100:.0f}% by the model's music gate)"
    else:
        tops = ", ".join(f"{g} {p * 100:.1f}%" for g, p in result.top(options.top_k))
    uncertain = "uncertain: " if state is State.UNCERTAIN else ""
    line = f"{display_path(path)}: {uncertain}{tops}  ({result.duration:.1f} s"
    line += f", {len(result.windows)} windows)" if len(result.windows) > 1 else ")"
    if options.with_windows and len(result.windows) > 1:
        for seg in segments(result):
            n = f"{seg.windows} windows" if seg.windows > 1 else "1 window"
            line += f"\n  {clock(seg.start)}-{clock(seg.end)}  {seg.genre} {seg.confidence * 100:.0f}%  ({n})"
    return line


def clock(seconds: float) -> str:
    """mm:ss (h:mm:ss from an hour on): how people read positions in a recording."""
    total = int(round(seconds))
    h, rest = divmod(total, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60:02d}:{rest % 60:02d}"


@dataclass
class Segment:
    start: float
    end: float
    genre: str
    confidence: float  # mean of the genre's probability over the segment's windows
    windows: int


def segments(result: TrackResult) -> list[Segment]:
    """Consecutive windows with the same top genre merged into one segment.

    Windows overlap (30 s every hop) and a window is labelled by its whole 30 s, so a change of music
    shows in the windows whose *centres* pass it: a boundary is placed halfway between the centres of
    the last window of one run and the first of the next (within half a hop of where the music
    changes, where the window starts put it up to 20 s early). The first segment starts at the
    track's start, the last runs to its end.
    """
    runs: list[tuple[int, list[WindowResult]]] = []
    for w in result.windows:
        best = int(w.probabilities.argmax())
        if runs and runs[-1][0] == best:
            runs[-1][1].append(w)
        else:
            runs.append((best, [w]))

    def centre(w: WindowResult) -> float:
        return (w.start + w.end) / 2

    cuts = [(centre(prev[-1]) + centre(ws[0])) / 2 for (_, prev), (_, ws) in zip(runs, runs[1:])]
    starts = [result.windows[0].start, *cuts]
    ends = [*cuts, result.windows[-1].end]
    return [
        Segment(start, end, result.labels[best], float(sum(w.probabilities[best] for w in ws) / len(ws)), len(ws))
        for (best, ws), start, end in zip(runs, starts, ends)
    ]


def classify_paths(
    paths: Iterable[str | Path],
    engine: Engine,
    options: ClassifyOptions,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
    progress: bool = False,
) -> int:
    """Classify every audio file under ``paths``; returns the number of failures.

    With ``progress``, a bar on stderr (a terminal only) for several files or one long one;
    results and errors are printed above it.
    """
    files, errors = find_audio_files(list(paths))
    bar = Progress(len(files), "classifying") if progress and _worth_a_bar(files) else None
    with bar.shown() if bar else contextlib.nullcontext():
        if bar:
            out, err = bar.above(out), bar.above(err)
        for e in errors:
            print(f"error: {e}", file=err)
        failures = len(errors)
        for path in files:
            try:
                result = analyse_file(path, engine, options.hop_seconds)
            except AudioError as exc:
                print(f"error: {exc}", file=err)
                failures += 1
                continue
            except (OSError, ValueError) as exc:  # an unforeseen fault in one file never ends the run
                print(f"error: {display_path(path)}: {exc}", file=err)
                failures += 1
                continue
            finally:
                if bar:
                    bar.advance(item=path.name)
            if options.as_json:
                out.write(dumps(result_to_dict(path, result, options), compact=False) + "\n")
            else:
                out.write(format_human(path, result, options) + "\n")
            out.flush()
    return failures


def _worth_a_bar(files: list[Path]) -> bool:
    """Several files, or one long enough (20 MB) to take a while."""
    return len(files) > 1 or (len(files) == 1 and files[0].stat().st_size > 20_000_000)
