"""What the trainer tells its user: epoch lines with ETA and a live log, thin-split warnings, Ctrl-C,
fine-tuning defaults, counts in the confusion plot. Real processes on a tiny synthetic set."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, cli_env, run_cli

from trainer.checkpoint import load_checkpoint
from trainer.plots import confusion_figure
from trainer.split import Split, thin_split_warnings
from trainer.synthset import make_dataset
from trainer.train import FoldState, TrainConfig, stop_reason

pytestmark = pytest.mark.train  # needs the [train] extra

ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 classes x 10 clips of 2 s, cached with 32-frame windows: a few seconds per epoch."""
    root = tmp_path_factory.mktemp("ux")
    make_dataset(root / "data", classes=2, clips=10, seconds=2.0, seed=0)
    proc = run_cli("prepare", str(root / "data"), "--out", str(root / "cache"), "--window-frames", "32", module="trainer", env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr
    return root / "cache"


def test_each_epoch_is_reported_with_an_eta_and_logged_in_the_run(cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = run_cli("train", str(cache), "--out", str(out), "--epochs", "2", module="trainer", env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr
    for epoch in (1, 2):
        assert f"fold 0 epoch {epoch}/2: train loss " in proc.stderr  # on the terminal without -v
    assert "/epoch, at most " in proc.stderr and "left" in proc.stderr
    log = (out / "train.log").read_text()  # the live log moved with the run folder
    assert "fold 0 epoch 1/2: train loss" in log and "fold 0 epoch 2/2: train loss" in log and "test accuracy" in log
    # 10 clips per class: 1 test clip each; the user is told and pointed to --folds
    warning = "the test part holds fewer than 5 clips of some classes (lament 1, sawdance 1): test accuracy is coarse; --folds 10"
    assert warning in proc.stderr and warning in log


def _wait_for(path: Path, text: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text():
        assert proc.poll() is None, path.read_text()[-3000:]
        assert time.monotonic() < deadline, path.read_text()[-3000:]
        time.sleep(0.2)


def test_ctrl_c_keeps_the_best_epoch_and_says_how_to_resume(cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    # Epochs of this tiny cache take milliseconds: with few of them (or an early stop) a loaded machine can
    # finish the run before the signal lands (exit 0), so the run is long enough never to end on its own.
    args = [sys.executable, "-m", "trainer", "train", str(cache), "--out", str(out), "--epochs", "5000", "--patience", "5000"]
    err = tmp_path / "stderr.txt"
    with open(err, "w") as fh:
        proc = subprocess.Popen(args, cwd=REPO, env=cli_env(ONE_THREAD), stdout=subprocess.DEVNULL, stderr=fh)
        _wait_for(err, "epoch 2/5000:", proc)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 1
    text = err.read_text()
    best = out.with_name("run.partial") / "best-so-far.pt"
    assert "interrupted after 2 finished epoch(s); the best epoch so far (" in text, text[-2000:]
    assert f"is in {best}; run the same command again to resume from epoch 3" in text
    model, info, _ = load_checkpoint(best)  # a usable model now
    assert info.labels == ["lament", "sawdance"] and info.frontend.window_frames == 32
    # the same command resumes after epoch 2 (SIGTERM, as systemd or a scheduler stops it, is handled alike)
    with open(err, "w") as fh:
        proc = subprocess.Popen(args, cwd=REPO, env=cli_env(ONE_THREAD), stdout=subprocess.DEVNULL, stderr=fh)
        _wait_for(err, "epoch 3/5000:", proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 1
    text = err.read_text()
    assert "fold 0: resuming after epoch 2" in text and "epoch 1/5000:" not in text
    assert "run the same command again to resume from epoch" in text


def test_finetune_defaults_are_sized_for_small_sets() -> None:
    finetune = run_cli("finetune", "--help", module="trainer").stdout
    train = run_cli("train", "--help", module="trainer").stdout
    squash = lambda text: " ".join(text.split())  # noqa: E731 (click wraps help lines)
    assert "[default: 30;" in squash(finetune.split("--epochs")[1]) and "[default: 100;" in squash(train.split("--epochs")[1])
    assert "[default: 5;" in squash(finetune.split("--patience")[1]) and "[default: 10;" in squash(train.split("--patience")[1])
    assert "[default: 5;" in squash(finetune.split("--accuracy-patience")[1]) and "[default: 0;" in squash(train.split("--accuracy-patience")[1])


def test_early_stop_on_a_plateau_of_validation_accuracy() -> None:
    state = FoldState(bad_epochs=1, best_accuracy=1.0, accuracy_bad_epochs=5)
    assert stop_reason(state, TrainConfig(early_stop_patience=10)) is None  # off by default (train)
    assert stop_reason(state, TrainConfig(early_stop_patience=10, accuracy_patience=5)) == "val accuracy 1.000 not beaten for 5 epochs"
    assert stop_reason(FoldState(bad_epochs=10), TrainConfig(early_stop_patience=10)) == "no val-loss improvement for 10 epochs"


def test_thin_splits_are_named() -> None:
    labels = {f"{g}{i}": g for g in ("jazz", "rock", "funk") for i in range(20)} | {"polka0": "polka"}
    split = Split(train=tuple(p for p in labels if p not in {"jazz0", "rock0", "funk0", "jazz1"}), val=("jazz1",),
                  test=("jazz0", "rock0", "funk0"))
    warnings = thin_split_warnings(split, labels, folds=1)
    assert "the test part has no clip of polka: its test accuracy says nothing about them; --folds 10 tests every clip once" in warnings[0]
    assert "the val part has no clip of funk, polka, rock" in warnings[1]
    assert "fewer than 5 clips of some classes (funk 1, jazz 1, rock 1)" in warnings[2]
    assert all("--folds" not in w for w in thin_split_warnings(split, labels, folds=10))  # already all folds
    big = {f"{g}{i}": g for g in ("jazz", "rock") for i in range(100)}
    assert thin_split_warnings(Split((), tuple(f"{g}{i}" for g in ("jazz", "rock") for i in range(10)),
                                     tuple(f"{g}{i}" for g in ("jazz", "rock") for i in range(10, 20))), big, 1) == []


def test_confusion_plot_shows_counts() -> None:
    fig = confusion_figure([[2, 0], [1, 47]], ["jazz", "rock"])
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == ["1.00\n2", "0.00\n0", "0.02\n1", "0.98\n47"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["jazz (2)", "rock (48)"]


def test_int8_export_shows_calibration_progress(tmp_path: Path) -> None:
    """int8 calibration runs for minutes at the default 96 windows; the user sees a bar, results print after it."""
    import torch
    from conftest import printed_above_a_bar, run_on_a_terminal

    from genre_stream.model.info import ModelInfo
    from trainer.checkpoint import save_checkpoint
    from trainer.model import BBNN

    torch.manual_seed(0)
    ckpt = tmp_path / "random.pt"
    save_checkpoint(ckpt, BBNN(n_classes=3).eval(), ModelInfo(labels=["a", "b", "c"], model_id="random"))
    code, screen = run_on_a_terminal("export", str(ckpt), "--out", str(tmp_path / "m.int8.onnx"), "--quantize", "int8", "--recipe", "plain",
                                     "--calibration-windows", "4", "--test-windows", "2", "--force", module="trainer")
    assert code == 0, screen[-3000:]
    assert "making 4 calibration and 2 test windows" in screen
    assert "calibrating int8 [" in screen and "] 4/4" in screen
    assert printed_above_a_bar(screen, "windows: 4 calibration, 2 test")
    assert (tmp_path / "m.int8.onnx").is_file()
