"""The trainer end to end on a synthetic labelled set, run as a user runs it (real processes).

prepare -> train -> evaluate -> export -> genre-stream classify; fine-tuning the bundled
model; torchrun with two gloo processes; resume after a killed run; several folds.
Everything trains 32-frame windows of 3 s clips for a few epochs so that the file
stays within a few minutes on two shared cores (one thread per process).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, cli_env, free_port, run_cli

from genre_stream.audio.normalization import RUNNING
from trainer.checkpoint import load_checkpoint
from trainer.synthset import make_dataset

pytestmark = pytest.mark.train  # needs the [train] extra

ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
WINDOW = "32"


def trainer(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    proc = run_cli(*args, module="trainer", timeout=timeout, env=ONE_THREAD)
    return proc


def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    return proc


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic training set (3 classes x 12 clips x 3 s), a separate held-out set, and their cache."""
    root = tmp_path_factory.mktemp("trainer")
    make_dataset(root / "data", classes=3, clips=12, seconds=3.0, seed=0)
    make_dataset(root / "heldout", classes=3, clips=5, seconds=3.0, seed=1)
    ok(trainer("prepare", str(root / "data"), "--out", str(root / "cache"), "--window-frames", WINDOW))
    return root


@pytest.fixture(scope="module")
def run(ws: Path) -> Path:
    ok(trainer("train", str(ws / "cache"), "--out", str(ws / "run"), "--epochs", "8", "--seed", "0"))
    return ws / "run"


def _evaluate(model: Path, data: Path, out: Path) -> dict:
    ok(trainer("evaluate", str(model), str(data), "--out", str(out)))
    return json.loads((out / "metrics.json").read_text())


def _has_export_command() -> bool:
    proc = run_cli("export", "--help", module="trainer")
    return proc.returncode == 0 and "--quantize" in proc.stdout


def _export_fp32(checkpoint: Path, out: Path) -> Path:
    """The export command when it is on this branch, else the same library call it wraps."""
    if _has_export_command():
        ok(trainer("export", str(checkpoint), "--out", str(out), "--quantize", "none"))
    else:
        from trainer.export import to_onnx_model
        from trainer.onnx_meta import save_atomic

        model, info, _ = load_checkpoint(checkpoint)
        save_atomic(to_onnx_model(model, info), out)
    return out


def test_train_writes_a_complete_run(run: Path, ws: Path) -> None:
    assert sorted(p.name for p in run.iterdir()) == ["confusion.png", "curves.png", "metrics.json", "model.pt", "train.log"]
    assert not (ws / "run.partial").exists()
    m = json.loads((run / "metrics.json").read_text())
    for split in ("train", "val", "test"):
        assert set(m[split]) >= {"accuracy", "loss", "per_class", "confusion"}
        assert set(m[split]["per_class"]["lament"]) == {"precision", "recall", "f1", "support"}
    files = [*m["split"]["train"], *m["split"]["val"], *m["split"]["test"]]
    assert len(files) == len(set(files)) == 36
    assert m["seed"] == 0 and m["config"]["lr"] == 0.01 and m["config"]["batch_size"] == 8
    assert len(m["history"]) == m["epochs_run"] and 1 <= m["best_epoch"] <= m["epochs_run"]
    assert m["versions"]["torch"] == torch.__version__
    assert m["val"]["accuracy"] >= 0.9
    model, info, _ = load_checkpoint(run / "model.pt")
    assert info.labels == ["clatter", "lament", "sawdance"] and model.n_classes == 3
    assert info.frontend.window_frames == int(WINDOW)  # the runtime classifies with the trained window
    assert info.normalization == RUNNING and m["config"]["normalization"] == RUNNING  # without --normalization: the bundled models'
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_heldout_accuracy_export_and_classify_agree(run: Path, ws: Path) -> None:
    fp32 = _evaluate(run / "model.pt", ws / "heldout", ws / "eval-pt")
    assert fp32["n"] == 15 and fp32["accuracy"] >= 0.9, fp32["confusion"]
    onnx_path = _export_fp32(run / "model.pt", ws / "model.fp32.onnx")
    exported = _evaluate(onnx_path, ws / "heldout", ws / "eval-onnx")
    assert exported["model_kind"] == "onnx"
    assert abs(exported["accuracy"] - fp32["accuracy"]) <= 0.02
    proc = ok(run_cli("classify", str(ws / "heldout"), "--model", str(onnx_path), "--json", "--device", "cpu", env=ONE_THREAD))
    classified = {}
    for line in proc.stdout.splitlines():
        row = json.loads(line)
        classified[str(Path(row["path"]).resolve())] = row["genre"]
    evaluated = {f["path"]: f["predicted"] for f in exported["files"]}
    assert classified == evaluated


def test_int8_export_accuracy_is_measured_within_two_points(run: Path, ws: Path) -> None:
    if not _has_export_command():
        pytest.skip("`genre-trainer export --quantize` is not on this branch yet (issue: quantized export)")
    # --force: this test measures the int8 model's accuracy itself instead of relying on the export's own gate
    force = ["--force"] if "--force" in run_cli("export", "--help", module="trainer").stdout else []
    ok(trainer("export", str(run / "model.pt"), "--out", str(ws / "model.int8.onnx"), "--quantize", "int8", "--calibration", str(ws / "data"), *force))
    fp32 = _evaluate(_export_fp32(run / "model.pt", ws / "m32.onnx"), ws / "heldout", ws / "e32")
    int8 = _evaluate(ws / "model.int8.onnx", ws / "heldout", ws / "e8")
    assert abs(int8["accuracy"] - fp32["accuracy"]) <= 0.02


def test_finetune_the_bundled_model_to_new_labels(ws: Path) -> None:
    out = ws / "ft"
    proc = ok(trainer("finetune", "default", str(ws / "cache"), "--out", str(out), "--freeze", "partial", "--epochs", "6"))
    assert "test accuracy" in proc.stdout
    model, info, _ = load_checkpoint(out / "model.pt")
    assert info.labels == ["clatter", "lament", "sawdance"]
    assert info.provenance["base_model"] == "bbnn-gtzan-augmented-fold0" and info.provenance["freeze"] == "partial"
    assert info.normalization == RUNNING  # the base model's
    base, _, _ = load_checkpoint(REPO / "trainer" / "models" / "bbnn-gtzan-augmented-fold0.pt")
    # frozen layers are exactly the base model's; the new decision layer has 3 outputs
    assert torch.equal(model.stem[0].weight, base.stem[0].weight)
    assert torch.equal(model.broadcast[0].branch1[0].running_mean, base.broadcast[0].branch1[0].running_mean)
    assert not torch.equal(model.broadcast[2].branch1[2].weight, base.broadcast[2].branch1[2].weight)
    assert model.classifier.out_features == 3
    heldout = _evaluate(out / "model.pt", ws / "heldout", ws / "eval-ft")
    assert heldout["accuracy"] >= 0.9, heldout["confusion"]


def test_torchrun_two_gloo_processes(ws: Path) -> None:
    out = ws / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
        "-m", "trainer", "-v", "train", str(ws / "cache"), "--out", str(out), "--epochs", "2", "--device", "cpu",
    ]  # fmt: skip
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600, env=cli_env(ONE_THREAD), cwd=REPO)
    ok(proc)
    assert "rank 1 of 2 on cpu (gloo)" in proc.stderr
    _, info, _ = load_checkpoint(out / "model.pt")
    assert info.labels == ["clatter", "lament", "sawdance"]
    m = json.loads((out / "metrics.json").read_text())
    assert m["epochs_run"] == 2 and len(m["history"]) == 2


def _train_cmd(ws: Path, out: Path, epochs: int) -> list[str]:
    return [sys.executable, "-m", "trainer", "-v", "train", str(ws / "cache"), "--out", str(out), "--epochs", str(epochs), "--seed", "5", "--patience", "50"]


def test_resume_after_a_killed_run_gives_the_same_result(ws: Path) -> None:
    epochs = 3
    ok(subprocess.run(_train_cmd(ws, ws / "straight", epochs), check=False, capture_output=True, text=True, timeout=600, env=cli_env(ONE_THREAD),
                      cwd=REPO))

    out = ws / "killed"
    resume = ws / "killed.partial" / "resume.pt"
    proc = subprocess.Popen(_train_cmd(ws, out, epochs), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=cli_env(ONE_THREAD), cwd=REPO)
    deadline = time.monotonic() + 300
    while not resume.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # a crash: no chance to clean up
    proc.wait()
    assert resume.exists() and not out.exists(), "the run finished before it could be interrupted"
    done = torch.load(resume, weights_only=True)["fold_state"]["epoch"]
    assert 1 <= done < epochs

    again = ok(subprocess.run(_train_cmd(ws, out, epochs), check=False, capture_output=True, text=True, timeout=600, env=cli_env(ONE_THREAD),
                              cwd=REPO))
    assert f"resuming after epoch {done}" in again.stderr
    a, b = json.loads((ws / "straight" / "metrics.json").read_text()), json.loads((out / "metrics.json").read_text())
    assert a["history"] == b["history"]
    assert a["test"] == b["test"]
    ma, _, _ = load_checkpoint(ws / "straight" / "model.pt")
    mb, _, _ = load_checkpoint(out / "model.pt")
    sa, sb = ma.state_dict(), mb.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_finished_run_is_never_overwritten(run: Path, ws: Path) -> None:
    before = (run / "metrics.json").read_bytes()
    proc = trainer("train", str(ws / "cache"), "--out", str(run), "--epochs", "1")
    assert proc.returncode == 1 and "already exists" in proc.stderr
    assert (run / "metrics.json").read_bytes() == before


def test_folds_report_mean_and_std(ws: Path) -> None:
    out = ws / "folds"
    proc = ok(trainer("train", str(ws / "cache"), "--out", str(out), "--epochs", "1", "--folds", "2"))
    assert "2 folds, test accuracy" in proc.stdout
    m = json.loads((out / "metrics.json").read_text())
    assert m["folds"] == 2 and len(m["test_accuracy_per_fold"]) == 2
    assert m["test_accuracy_mean"] == pytest.approx(sum(m["test_accuracy_per_fold"]) / 2)
    tests = [set(json.loads((out / f"fold-0{k}" / "metrics.json").read_text())["split"]["test"]) for k in (0, 1)]
    assert not tests[0] & tests[1]
    assert (out / "model.pt").is_file() and (out / "confusion.png").is_file()


def test_changed_options_do_not_resume_a_different_run(ws: Path) -> None:
    partial = ws / "other.partial"
    partial.mkdir()
    (partial / "run.json").write_text(json.dumps({"config": {"epochs": 99}}))
    proc = trainer("train", str(ws / "cache"), "--out", str(ws / "other"), "--epochs", "1")
    assert proc.returncode == 1 and "interrupted run with other settings" in proc.stderr
    assert not (ws / "other").exists()
