"""The trainer trains, fine-tunes, evaluates and exports models with either normalisation (trainer/inputs.py).

A model's normalisation is what its checkpoint and ONNX metadata say; with RUNNING a training crop is
the whole track normalised and then cropped, as the runtime would feed it; with SEED nothing changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
import pytest
import soundfile as sf
import torch
from conftest import run_cli

from genre_stream.audio.decode import load_audio
from genre_stream.audio.frontend import FrontendConfig, loop_to_length, normalize_window
from genre_stream.audio.normalization import NORMALIZATIONS, RUNNING, SEED, running_normalize, window_of
from genre_stream.model.choice import open_engine
from genre_stream.model.info import METADATA_KEY
from genre_stream.tracks.analysis import window_starts
from trainer.checkpoint import load_checkpoint
from trainer.commands import NORMALIZATION_WORDS, TRAIN_DEFAULTS, normalization_named
from trainer.corrections import CorrectionConfig, LabelledTrack, learn_corrections
from trainer.data import Cache, PrepareConfig, prepare
from trainer.distributed import TrainError
from trainer.export import torch_probabilities
from trainer.finetune import resolve_checkpoint
from trainer.frontend_torch import TorchMelFrontend
from trainer.inputs import DEFAULT_NORMALIZATION, ModelInput, TrackInputs
from trainer.int8_windows import audio_windows, synthetic_sets
from trainer.run import RunSpec, train_run
from trainer.synth import synth_piece
from trainer.synthset import make_dataset
from trainer.train import TrainConfig, make_batch

pytestmark = pytest.mark.train  # needs the [train] extra

ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
WINDOW = 32


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 classes x 10 clips of 2 s (44 frames: crops of 32 start at 0..12), cached for 32-frame windows."""
    root = tmp_path_factory.mktemp("norm")
    make_dataset(root / "data", classes=2, clips=10, seconds=2.0, seed=0)
    prepare(root / "data", root / "cache", PrepareConfig(FrontendConfig(window_frames=WINDOW)))
    return root / "cache"


def test_every_word_names_one_normalisation() -> None:
    assert sorted(normalization_named(w) for w in NORMALIZATION_WORDS) == sorted(NORMALIZATIONS)
    assert normalization_named("running") == RUNNING and normalization_named("seed") == SEED
    assert normalization_named(TRAIN_DEFAULTS["normalization"]) == DEFAULT_NORMALIZATION == RUNNING  # what `train --help` says; the bundled models'


def test_running_crops_are_cut_from_the_whole_normalised_track(cache_dir: Path) -> None:
    cache = Cache(cache_dir)
    running, seed = ModelInput(RUNNING, WINDOW), ModelInput(SEED, WINDOW)
    differs = False
    for i, entry in enumerate(cache.entries):
        whole = running_normalize(cache.power(i), WINDOW, cache.frontend.top_db)
        for start in range(entry.frames - WINDOW + 1):
            crop = cache.window(i, start, WINDOW, running)
            np.testing.assert_array_equal(crop, whole[start : start + WINDOW])
            differs |= not np.array_equal(crop, window_of(RUNNING, cache.power(i, start, WINDOW)))
            np.testing.assert_array_equal(cache.window(i, start, WINDOW, seed), normalize_window(cache.power(i, start, WINDOW)))
    assert differs, "a crop normalised on its own would pass too: the data does not tell the two apart"

    # the batches training reads: the same crops at the starts the batch's generator draws
    indices = list(range(len(cache.entries)))
    batch = make_batch(cache, indices, running, None, np.random.default_rng(7))
    rng = np.random.default_rng(7)
    for k, i in enumerate(indices):
        start = int(rng.integers(0, cache.entries[i].frames - WINDOW + 1))
        np.testing.assert_array_equal(batch[k], running_normalize(cache.power(i), WINDOW)[start : start + WINDOW])


def test_whole_tracks_are_normalised_once_and_memory_is_bounded() -> None:
    tracks = [(np.random.default_rng(k).random((100, 8)) ** 4).astype(np.float32) for k in range(3)]
    reads: list[int] = []

    def read(i: int, start: int, length: int | None) -> np.ndarray:
        reads.append(i)
        return tracks[i][start : None if length is None else start + length]

    one_track = 100 * 8 * 4
    inputs = TrackInputs(ModelInput(RUNNING, 20), read, keep_bytes=2 * one_track)
    for start in (0, 30, 80):
        np.testing.assert_array_equal(inputs.window(0, start, 20), running_normalize(tracks[0], 20)[start : start + 20])
    assert reads == [0]  # normalised once, cropped three times
    inputs.window(1, 0, 20)
    inputs.window(0, 5, 20)  # still kept (two tracks fit)
    inputs.window(2, 0, 20)  # evicts track 1, the least recently used
    inputs.window(0, 9, 20)
    inputs.window(1, 0, 20)
    assert reads == [0, 1, 2, 1]
    with pytest.raises(IndexError):
        inputs.window(0, 90, 20)


def test_int8_windows_are_normalised_as_the_model_is(tmp_path: Path) -> None:
    frontend = TorchMelFrontend(FrontendConfig())
    c = frontend.config
    power = frontend.power(loop_to_length(synth_piece(0), c.window_samples))[: c.window_frames]
    running = synthetic_sets(frontend, 1, 0, RUNNING).calibration[0]
    np.testing.assert_array_equal(running, window_of(RUNNING, power))
    np.testing.assert_array_equal(synthetic_sets(frontend, 1, 0).calibration[0], frontend.window(synth_piece(0)))  # seed: as before

    # music cut as classify cuts it: windows of the whole track normalised as a stream
    small = TorchMelFrontend(FrontendConfig(window_frames=WINDOW))
    audio = synth_piece(1)[: 5 * c.sample_rate]
    sf.write(tmp_path / "piece.wav", audio, c.sample_rate)
    windows, _ = audio_windows([tmp_path], small, hop_seconds=1.0, normalization=RUNNING)
    whole = running_normalize(small.power(load_audio(tmp_path / "piece.wav", c.sample_rate)), WINDOW)
    starts = window_starts(len(whole), WINDOW, small.config.seconds_to_frames(1.0))
    np.testing.assert_allclose(windows, np.stack([whole[s : s + WINDOW] for s in starts]), atol=1e-5)


def test_corrections_take_the_base_models_normalisation() -> None:
    model, info, _ = load_checkpoint(resolve_checkpoint("default"))
    config = CorrectionConfig(steps=2, batch_size=2, window_frames=32, lr=1e-3)
    track = [LabelledTrack((np.random.default_rng(0).random((700, 128)) ** 4).astype(np.float32), 3)]
    plain = learn_corrections(model, track, (), config, info.frontend.top_db)
    seed = learn_corrections(model, track, (), config, info.frontend.top_db, model_input=ModelInput(SEED, info.frontend.window_frames))
    running = learn_corrections(model, track, (), config, info.frontend.top_db, model_input=ModelInput.of(info))
    assert info.normalization == RUNNING
    assert all(torch.equal(p, q) for p, q in zip(plain.parameters(), seed.parameters())), "seed: the inputs of before"
    assert not all(torch.equal(p, q) for p, q in zip(seed.parameters(), running.parameters())), "running crops are other inputs"


def test_library_corrections_refuse_another_normalisation(tmp_path: Path) -> None:
    proc = run_cli("finetune", "default", "--library", str(tmp_path / "library.sqlite"), "--out", str(tmp_path / "out"),
                   "--normalization", "running", module="trainer")
    assert proc.returncode == 2 and "not used with --library: --normalization" in proc.stderr


# ---------------------------------------------------------------- real runs


def _trainer(*args: str) -> subprocess.CompletedProcess[str]:
    proc = run_cli(*args, module="trainer", timeout=600, env=ONE_THREAD)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc


@pytest.fixture(scope="module")
def running_run(cache_dir: Path) -> Path:
    out = cache_dir.parent / "running-run"
    _trainer("train", str(cache_dir), "--out", str(out), "--epochs", "1", "--normalization", "running")
    return out


@pytest.mark.slow
def test_a_running_run_says_so_in_its_checkpoint_export_and_evaluation(running_run: Path, cache_dir: Path) -> None:
    model, info, _ = load_checkpoint(running_run / "model.pt")
    assert info.normalization == RUNNING and info.frontend.window_frames == WINDOW
    assert json.loads((running_run / "metrics.json").read_text())["config"]["normalization"] == RUNNING

    onnx_path = running_run.parent / "running.onnx"
    _trainer("export", str(running_run / "model.pt"), "--out", str(onnx_path), "--quantize", "none", "--test-windows", "2")
    meta = next(p.value for p in onnx.load(str(onnx_path)).metadata_props if p.key == METADATA_KEY)
    assert json.loads(meta)["normalization"] == RUNNING
    assert open_engine(onnx_path, device="cpu", threads=1).info.normalization == RUNNING

    # evaluate scores each clip on windows of the whole normalised track, as the model's metadata says
    report = json.loads(_trainer("evaluate", str(running_run / "model.pt"), str(cache_dir), "--json").stdout)
    assert report["normalization"] == RUNNING
    cache = Cache(cache_dir)
    hop = cache.frontend.seconds_to_frames(10.0)
    told_apart = False
    for row, i in zip(report["files"], cache.originals()):
        power = cache.power(i)
        whole = running_normalize(power, WINDOW)
        starts = window_starts(len(power), WINDOW, hop)
        expected = torch_probabilities(model, np.stack([whole[s : s + WINDOW] for s in starts])).mean(axis=0)
        assert row["confidence"] == pytest.approx(float(expected.max()), abs=1e-5)
        seeded = torch_probabilities(model, np.stack([normalize_window(power[s : s + WINDOW]) for s in starts])).mean(axis=0)
        told_apart |= abs(float(seeded.max()) - row["confidence"]) > 1e-4
    assert told_apart, "seed windows would give the same confidences: the check proves nothing"


@pytest.mark.slow
def test_finetuning_keeps_the_base_normalisation_unless_told(running_run: Path, cache_dir: Path) -> None:
    kept = cache_dir.parent / "ft-kept"
    _trainer("finetune", str(running_run / "model.pt"), str(cache_dir), "--out", str(kept), "--epochs", "1", "--freeze", "all")
    assert load_checkpoint(kept / "model.pt")[1].normalization == RUNNING
    told = cache_dir.parent / "ft-told"
    proc = _trainer("finetune", "default", str(cache_dir), "--out", str(told), "--epochs", "1", "--freeze", "all", "--normalization", "seed")
    assert load_checkpoint(told / "model.pt")[1].normalization == SEED
    assert f"trained with the {RUNNING} normalisation and is fine-tuned with {SEED}" in proc.stderr


@pytest.mark.slow
def test_a_run_interrupted_before_normalisations_existed_resumes_as_seed(cache_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cache = Cache(cache_dir)
    config = TrainConfig(epochs=1, device="cpu", normalization=SEED)
    old = asdict(RunSpec(hashlib.sha256((cache_dir / "manifest.json").read_text().encode()).hexdigest(), config.to_dict(), cache.labels))
    del old["config"]["normalization"]  # run.json as written before this field existed
    for name in ("seed-run", "running-run"):
        (tmp_path / f"{name}.partial").mkdir()
        (tmp_path / f"{name}.partial" / "run.json").write_text(json.dumps(old))
    with pytest.raises(TrainError, match="differs in: config"):
        train_run(cache_dir, tmp_path / "running-run", TrainConfig(epochs=1, device="cpu", normalization=RUNNING))
    with caplog.at_level(logging.WARNING, logger="trainer.run"):
        train_run(cache_dir, tmp_path / "seed-run", config)
    assert "resuming the interrupted run" in caplog.text
    assert load_checkpoint(tmp_path / "seed-run" / "model.pt")[1].normalization == SEED
