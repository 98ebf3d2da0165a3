"""The development clips the model measurements use: ``../shared/audio/genre-dev`` (never shipped).

One reader for the benchmarks that score genre-dev, so the location, the refusal when the
clips are absent and the CSV reading live in one place.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_LABELS = REPO.parent / "shared" / "audio" / "genre-dev" / "labels.csv"


def read_labels(labels_csv: Path) -> list[dict[str, str]]:
    """The rows of ``labels.csv`` (path, label, is_gtzan, ...); exits naming the file when it is absent."""
    if not labels_csv.is_file():
        sys.exit(f"{labels_csv}: labelled clips not found (needs ../shared/audio/genre-dev)")
    with open(labels_csv, newline="") as f:
        return list(csv.DictReader(f))
