"""`genre-stream classify`: one-off classification of files and folders.

One bad file never takes the run down: each failure becomes one error line naming
the file and the reason, the rest are still classified, and the caller turns
"any failure" into exit status 1.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from .audio import AudioError, find_audio_files
from .calibration import UncertaintyRule
from .engine import Engine
from .windows import DEFAULT_HOP_SECONDS, TrackResult, analyse_file

log = logging.getLogger(__name__)


@dataclass
class ClassifyOptions:
    hop_seconds: float = DEFAULT_HOP_SECONDS
    top_k: int = 3
    as_json: bool = False
    with_windows: bool = False
    uncertainty: UncertaintyRule = UncertaintyRule()  # the CLI passes the model's rule (UncertaintyRule.for_model)


def track_state(result: TrackResult, options: ClassifyOptions) -> str:
    """"uncertain" when the rule says the track's mean probabilities name no genre reliably, else "music"."""
    return "uncertain" if options.uncertainty.is_uncertain(result.probabilities) else "music"


def result_to_dict(path: Path, result: TrackResult, options: ClassifyOptions) -> dict[str, Any]:
    labels = result.labels
    data: dict[str, Any] = {
        "path": str(path),
        "duration": round(result.duration, 3),
        "genre": result.genre,  # the best guess even when uncertain, so readers of "genre" alone see no change
        "state": track_state(result, options),
        "confidence": round(result.confidence, 6),
        "top": [{"genre": g, "confidence": round(p, 6)} for g, p in result.top(options.top_k)],
        "probabilities": {lab: round(float(p), 6) for lab, p in zip(labels, result.probabilities)},
        "model": result.model,
        "precision": result.precision,
    }
    if options.with_windows:
        data["windows"] = [
            {
                "start": round(w.start, 3),
                "end": round(w.end, 3),
                "probabilities": {lab: round(float(p), 6) for lab, p in zip(labels, w.probabilities)},
            }
            for w in result.windows
        ]
    return data


def format_human(path: Path, result: TrackResult, options: ClassifyOptions) -> str:
    tops = ", ".join(f"{g} {p * 100:.1f}%" for g, p in result.top(options.top_k))
    uncertain = "uncertain: " if track_state(result, options) == "uncertain" else ""
    line = f"{path}: {uncertain}{tops}  ({result.duration:.1f} s"
    line += f", {len(result.windows)} windows)" if len(result.windows) > 1 else ")"
    if options.with_windows and len(result.windows) > 1:
        for w in result.windows:
            best = int(w.probabilities.argmax())
            line += f"\n  {w.start:7.1f}-{w.end:7.1f} s  {result.labels[best]} {w.probabilities[best] * 100:.1f}%"
    return line


def classify_paths(
    paths: Iterable[str | Path],
    engine: Engine,
    options: ClassifyOptions,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
    progress: Callable[[Iterable[Path]], Iterable[Path]] | None = None,
) -> int:
    """Classify every audio file under ``paths``; returns the number of failures."""
    files, errors = find_audio_files(list(paths))
    for e in errors:
        print(f"error: {e}", file=err)
    failures = len(errors)
    for path in progress(files) if progress else files:
        try:
            result = analyse_file(path, engine, options.hop_seconds)
        except AudioError as exc:
            print(f"error: {exc}", file=err)
            failures += 1
            continue
        if options.as_json:
            out.write(json.dumps(result_to_dict(path, result, options)) + "\n")
        else:
            out.write(format_human(path, result, options) + "\n")
        out.flush()
    return failures
