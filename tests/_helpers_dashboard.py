"""Helpers shared by the history and dashboard tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from genre_stream.history import iso_utc
from genre_stream.messages import GenreEvent, GenreState

REPO = Path(__file__).resolve().parents[1]
SHARED_AUDIO = REPO.parent / "shared" / "audio"
ARTIFACTS = REPO / "test-artifacts"
LABELS = ["blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock"]


def state(source: str, genre: str | None, confidence: float, ts: float, kind: str = "music") -> GenreState:
    """A GenreState stamped at unix time ``ts`` (as if recorded then)."""
    probs = {label: (confidence if label == genre else (1 - confidence) / (len(LABELS) - 1)) for label in LABELS}
    return GenreState(source, genre if kind == "music" else None, confidence if kind == "music" else 0.0,
                      probs if kind == "music" else {}, kind, 0.0, 30.0, "test-model", timestamp=iso_utc(ts))


def changed(source: str, old: str, new: str, ts: float) -> GenreEvent:
    event = GenreEvent.genre_changed(source, old, new, 0.8)
    event.timestamp = iso_utc(ts)
    return event


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    return e


def run_module(args: list[str], timeout: float = 120, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """``python -m genre_stream ARGS`` as a process, with the repo on PYTHONPATH."""
    return subprocess.run([sys.executable, "-m", "genre_stream", *args], capture_output=True, text=True,
                          timeout=timeout, env=env(), cwd=REPO, **kwargs)  # type: ignore[call-overload]
