"""`genre-stream library label`: user corrections stored in a real library database."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from _helpers_library import write_wav
from conftest import run_cli

from genre_stream.library.db import LibraryDB, LibraryError
from genre_stream.library.labels import label_track, remove_label, user_labels

LABELS = ["blues", "reggae", "metal", "classical", "pop", "jazz", "disco", "hiphop", "rock", "country"]


def _tone(path: Path) -> Path:
    write_wav(path, 0.2 * np.sin(2 * np.pi * 220 * np.arange(22050) / 22050))
    return path


def test_label_list_and_remove_through_the_cli(tmp_path: Path) -> None:
    db = tmp_path / "library.sqlite"
    a, b = _tone(tmp_path / "a.wav"), _tone(tmp_path / "b.wav")
    for path, genre in ((a, "rock"), (b, "jazz"), (a, "blues")):  # the second label of a replaces the first
        proc = run_cli("library", "label", str(path), genre, "--db", str(db))
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == f"{path}: {genre}"
    listed = run_cli("library", "label", "--list", "--json", "--db", str(db))
    assert listed.returncode == 0, listed.stderr
    assert [(r["path"], r["genre"], r["origin"]) for r in json.loads(listed.stdout)] == [(str(a), "blues", "cli"), (str(b), "jazz", "cli")]
    text = run_cli("library", "label", "--list", "--db", str(db)).stdout.splitlines()
    assert text == [f"blues      {a}", f"jazz       {b}"]

    a.unlink()  # a file that vanished can still be un-labelled
    assert run_cli("library", "label", str(a), "--remove", "--db", str(db)).returncode == 0
    again = run_cli("library", "label", str(a), "--remove", "--db", str(db))
    assert again.returncode == 1 and "has no label" in again.stderr
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT path, genre FROM labels").fetchall() == [(str(b), "jazz")]


def test_bad_labels_are_refused_with_the_reason(tmp_path: Path) -> None:
    db = tmp_path / "library.sqlite"
    song = _tone(tmp_path / "song.wav")
    typo = run_cli("library", "label", str(song), "jaz", "--db", str(db))
    assert typo.returncode == 1 and "unknown genre 'jaz'" in typo.stderr and "blues, reggae, metal" in typo.stderr
    missing = run_cli("library", "label", str(tmp_path / "nope.wav"), "jazz", "--db", str(db))
    assert missing.returncode == 1 and "nope.wav: no such file" in missing.stderr
    for args in (["--list", str(song)], [str(song)], [str(song), "jazz", "--remove"], []):
        usage = run_cli("library", "label", *args, "--db", str(db))
        assert usage.returncode == 2 and "label PATH GENRE" in usage.stderr, args
    assert run_cli("library", "label", "--list", "--db", str(db)).stdout.strip() == "no labels recorded"


def test_labels_table_is_added_to_an_existing_database(tmp_path: Path) -> None:
    """An index written before labels existed gains the table on first use and keeps its tracks."""
    path = tmp_path / "library.sqlite"
    with LibraryDB(path) as db:
        db.ensure_labels(LABELS)
    with sqlite3.connect(path) as conn:
        assert "labels" not in {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    song = _tone(tmp_path / "song.wav")
    with LibraryDB(path) as db:
        stored = label_track(db, song, "jazz", LABELS, origin="dashboard")
        assert user_labels(db) == [stored] and stored.origin == "dashboard"
        with pytest.raises(LibraryError, match="unknown genre"):
            label_track(db, song, "polka", LABELS)
        assert remove_label(db, song) and not remove_label(db, song)
        assert db.labels == LABELS
