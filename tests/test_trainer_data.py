"""prepare and the cache: real decoding through the runtime frontend, incremental updates, bad data."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import run_cli

from genre_stream.audio.decode import load_audio
from genre_stream.audio.frontend import FrontendConfig, MelFrontend, loop_to_length, normalize_window
from genre_stream.audio.normalization import SEED
from trainer.data import Cache, DataError, PrepareConfig, prepare
from trainer.inputs import ModelInput
from trainer.synthset import SAMPLE_RATE, make_dataset

pytestmark = pytest.mark.train  # needs the [train] extra

SMALL = PrepareConfig(FrontendConfig(window_frames=32))
SEED_32 = ModelInput(SEED, 32)  # a model of 32-frame windows with the seed normalisation


def _tone(path: Path, hz: float, seconds: float) -> Path:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32), SAMPLE_RATE)
    return path


@pytest.fixture
def data(tmp_path: Path) -> Path:
    make_dataset(tmp_path / "data", classes=2, clips=3, seconds=2.0, seed=3)
    return tmp_path / "data"


def test_cache_holds_the_runtime_frontend_frames(data: Path, tmp_path: Path) -> None:
    report = prepare(data, tmp_path / "cache", SMALL)
    assert report.decoded == 6 and report.reused == 0 and not report.skipped
    cache = Cache(tmp_path / "cache")
    assert cache.labels == ["lament", "sawdance"] and len(cache.entries) == 6
    frontend = MelFrontend(SMALL.frontend)
    for i, entry in enumerate(cache.entries):
        expected = frontend.power(load_audio(entry.path))
        np.testing.assert_array_equal(cache.power(i), expected)
        np.testing.assert_array_equal(cache.window(i, 3, 32, SEED_32), normalize_window(expected[3:35]))
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert all(len(e["sha256"]) == 64 for e in manifest["entries"])


def test_rerun_decodes_only_what_changed(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "cache"
    prepare(data, out, SMALL)
    again = prepare(data, out, SMALL)
    assert (again.decoded, again.reused, again.removed) == (0, 6, 0)
    changed = min((data / "lament").glob("*.wav"))
    _tone(changed, 300.0, 2.0)
    min((data / "sawdance").glob("*.wav")).unlink()
    third = prepare(data, out, SMALL)
    assert (third.decoded, third.reused, third.removed) == (1, 4, 1)
    cache = Cache(out)
    i = next(k for k, e in enumerate(cache.entries) if e.path == str(changed.resolve()))
    np.testing.assert_array_equal(cache.power(i), MelFrontend(SMALL.frontend).power(load_audio(changed)))
    # only shards still referenced remain on disk
    assert sorted(p.name for p in (out / "shards").iterdir()) == sorted(cache.manifest["shards"])


def test_short_clip_is_looped_like_classify(tmp_path: Path) -> None:
    _tone(tmp_path / "d" / "a" / "short.wav", 440.0, 0.5)
    _tone(tmp_path / "d" / "b" / "long.wav", 220.0, 2.0)
    prepare(tmp_path / "d", tmp_path / "c", SMALL)
    cache = Cache(tmp_path / "c")
    i = next(k for k, e in enumerate(cache.entries) if e.label == "a")
    assert cache.entries[i].looped and cache.entries[i].frames == 32
    c = SMALL.frontend
    audio = load_audio(tmp_path / "d" / "a" / "short.wav")
    # what genre_stream.tracks.analysis feeds the model for a clip shorter than the window
    np.testing.assert_allclose(cache.window(i, 0, 32, SEED_32), MelFrontend(c).window(loop_to_length(audio, c.window_samples)), atol=1e-6)


def test_float16_cache_gives_nearly_the_same_windows(data: Path, tmp_path: Path) -> None:
    prepare(data, tmp_path / "c32", SMALL)
    prepare(data, tmp_path / "c16", PrepareConfig(SMALL.frontend, "float16"))
    a, b = Cache(tmp_path / "c32"), Cache(tmp_path / "c16")
    assert (tmp_path / "c16" / "shards").stat() and sum(p.stat().st_size for p in (tmp_path / "c16/shards").iterdir()) * 2 == sum(
        p.stat().st_size for p in (tmp_path / "c32/shards").iterdir()
    )
    for i in range(len(a.entries)):
        assert np.max(np.abs(a.window(i, 0, 32, SEED_32) - b.window(i, 0, 32, SEED_32))) < 2e-3


def test_pitch_shifted_copies_move_the_pitch(tmp_path: Path) -> None:
    _tone(tmp_path / "d" / "a" / "tone.wav", 880.0, 2.0)
    _tone(tmp_path / "d" / "b" / "low.wav", 110.0, 2.0)
    prepare(tmp_path / "d", tmp_path / "c", PrepareConfig(SMALL.frontend, pitch_shifts=(-3, 3)))
    cache = Cache(tmp_path / "c")
    peak = {e.pitch: float(np.argmax(cache.power(i).mean(axis=0))) for i, e in enumerate(cache.entries) if e.label == "a"}
    assert set(peak) == {-3, 0, 3}
    assert peak[-3] < peak[0] < peak[3]
    assert len(cache.originals()) == 2


def test_corrupt_file_is_listed_and_skipped(data: Path, tmp_path: Path) -> None:
    bad = data / "lament" / "lament.99999.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    proc = run_cli("prepare", str(data), "--out", str(tmp_path / "c"), "--window-frames", "32", module="trainer")
    assert proc.returncode == 0, proc.stderr
    assert f"skipped {bad}" in proc.stderr
    cache = Cache(tmp_path / "c")
    assert len(cache.entries) == 6 and cache.skipped[0]["path"] == str(bad)


@pytest.mark.parametrize("case", ["empty", "one_label", "all_corrupt", "empty_label_dirs"])
def test_unusable_data_is_refused_and_nothing_is_written(tmp_path: Path, case: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    if case == "one_label":
        _tone(data / "rock" / "a.wav", 220.0, 1.0)
        _tone(data / "rock" / "b.wav", 330.0, 1.0)
    elif case == "all_corrupt":
        for label in ("a", "b"):
            (data / label).mkdir()
            (data / label / "x.wav").write_bytes(b"not audio at all")
    elif case == "empty_label_dirs":
        (data / "a").mkdir()
        (data / "b").mkdir()
    proc = run_cli("prepare", str(data), "--out", str(tmp_path / "cache"), module="trainer")
    assert proc.returncode == 1
    message = {"empty": "no label folders", "one_label": "one label only ('rock'", "all_corrupt": "none of the 2 files could be decoded", "empty_label_dirs": "no audio files found"}[case]
    assert message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "cache").exists()


def test_csv_manifest_with_missing_files_names_them(data: Path, tmp_path: Path) -> None:
    rows = [("path", "label")] + [(str(p), p.parent.name) for p in sorted(data.rglob("*.wav"))]
    rows.append(("gone/missing.wav", "lament"))
    manifest = tmp_path / "list.csv"
    with open(manifest, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    with pytest.raises(DataError, match=r"1 file\(s\) named in the manifest do not exist:\n  .*list.csv:8: .*gone/missing.wav"):
        prepare(manifest, tmp_path / "cache", SMALL)
    assert not (tmp_path / "cache").exists()
    manifest.write_text("\n".join(",".join(r) for r in rows[:-1]) + "\n")
    assert prepare(manifest, tmp_path / "cache", SMALL).decoded == 6


def test_train_refuses_a_missing_or_truncated_cache(data: Path, tmp_path: Path) -> None:
    proc = run_cli("train", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run"), module="trainer")
    assert proc.returncode == 1 and "not a prepared cache" in proc.stderr
    prepare(data, tmp_path / "cache", SMALL)
    shard = next((tmp_path / "cache" / "shards").iterdir())
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(DataError, match="truncated"):
        Cache(tmp_path / "cache")


def test_bad_options_are_named(data: Path, tmp_path: Path) -> None:
    proc = run_cli("prepare", str(data), "--out", str(tmp_path / "c"), "--pitch-shift=-3,x", module="trainer")
    assert proc.returncode == 1 and "pitch shift 'x' is not a whole number of semitones" in proc.stderr
    assert not (tmp_path / "c").exists()
