"""Calibration in the model metadata, applied by the engine; the "uncertain" rule; the fit and its metrics."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from genre_stream.audio.frontend import FrontendConfig
from genre_stream.model.calibration import Calibration, UncertaintyRule
from genre_stream.model.choice import open_engine
from genre_stream.model.info import METADATA_KEY, ModelInfo
from trainer import temperature
from trainer.metrics import expected_calibration_error, reliability_bins

LABELS = ["a", "b", "c"]
FRAMES, MELS = 16, 128


def tiny_model(path: Path, info: ModelInfo) -> Path:
    """An ONNX model with the engine's interface and no torch: mean over frames, a linear layer, softmax."""
    n = len(info.labels)
    w = np.zeros((MELS, n), np.float32)
    w[np.arange(n), np.arange(n)] = 8.0 / 2.0 ** np.arange(n)  # mel band i drives class i
    e = np.ones((MELS, 32), np.float32) / MELS
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["x"], ["m"], axes=[1], keepdims=0),
            helper.make_node("MatMul", ["m", "w"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
            helper.make_node("MatMul", ["m", "e"], ["embedding"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", info.frontend.window_frames, MELS])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["n", n]),
         helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["n", 32])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(e, "e")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, info.to_json()
    onnx.save(proto, path)
    return path


def _windows() -> np.ndarray:
    x = np.zeros((3, FRAMES, MELS), np.float32)
    x[0, :, 0] = 1.0
    x[1, :, 1] = 0.5
    x[2, :, 2] = 0.5
    return x


def test_engine_applies_the_temperature_from_the_model_metadata(tmp_path: Path) -> None:
    frontend = FrontendConfig(window_frames=FRAMES)
    raw = open_engine(tiny_model(tmp_path / "raw.onnx", ModelInfo(LABELS, frontend)), device="cpu", threads=1)
    cal = Calibration(temperature=2.0, uncertain_threshold=0.6)
    hot = open_engine(tiny_model(tmp_path / "cal.onnx", ModelInfo(LABELS, frontend, calibration=cal)), device="cpu", threads=1)
    assert raw.info.calibration is None and hot.info.calibration == cal
    p_raw = raw.predict(_windows()).probabilities
    p_cal = hot.predict(_windows()).probabilities
    logits = np.log(p_raw) / 2.0
    expected = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(p_cal, expected, atol=1e-5)
    assert (p_cal.max(1) < p_raw.max(1)).all()  # T > 1 flattens every window
    np.testing.assert_array_equal(p_cal.argmax(1), p_raw.argmax(1))  # and never changes the answer


def test_old_metadata_without_calibration_still_loads() -> None:
    old = json.loads(ModelInfo(LABELS).to_json())
    assert "calibration" not in old
    assert ModelInfo.from_dict(old).calibration is None
    cal = Calibration(1.7, floor=0.002, uncertain_threshold=0.5, uncertain_margin=0.1, fitted_on="x", measurements={"ece": 0.1})
    assert ModelInfo.from_json(ModelInfo(LABELS, calibration=cal).to_json()).calibration == cal


@pytest.mark.parametrize("bad", [{"temperature": 0.0}, {"temperature": 1.0, "uncertain_threshold": 1.5}, {"floor": 0.1}])
def test_bad_calibration_metadata_is_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        Calibration.from_dict(bad)


def test_floor_keeps_zero_probabilities_finite() -> None:
    p = np.array([[1.0, 0.0, 0.0]], np.float32)  # an int8 export's softmax is mostly exact zeros
    out = Calibration(2.0, floor=1 / 510).apply(p)
    assert np.isfinite(out).all() and out[0, 1] > 0.01
    np.testing.assert_allclose(out.sum(), 1.0, atol=1e-6)


def test_uncertainty_rule_uses_top_probability_and_margin() -> None:
    p = np.array([[0.9, 0.05, 0.05], [0.45, 0.44, 0.11], [0.4, 0.3, 0.3]])
    np.testing.assert_array_equal(UncertaintyRule(0.5, 0.0).uncertain_mask(p), [False, True, True])
    np.testing.assert_array_equal(UncertaintyRule(0.0, 0.05).uncertain_mask(p), [False, True, False])
    assert not UncertaintyRule().uncertain_mask(p).any()  # the default never says uncertain


def test_rule_defaults_come_from_the_model_and_user_values_win() -> None:
    cal = Calibration(2.0, uncertain_threshold=0.55, uncertain_margin=0.2)
    assert UncertaintyRule.for_model(cal) == UncertaintyRule(0.55, 0.2)
    assert UncertaintyRule.for_model(cal, threshold=0.3) == UncertaintyRule(0.3, 0.2)
    assert UncertaintyRule.for_model(cal, threshold=0.0, margin=0.0) == UncertaintyRule()
    assert UncertaintyRule.for_model(None) == UncertaintyRule()


def test_ece_and_reliability_bins() -> None:
    p = np.array([[0.95, 0.05], [0.95, 0.05], [0.55, 0.45], [0.55, 0.45]])
    y = np.array([0, 0, 0, 1])
    bins = reliability_bins(p, y, 10)
    assert [(b["count"], b["accuracy"]) for b in bins] == [(2, 0.5), (2, 1.0)]
    assert expected_calibration_error(p, y) == pytest.approx(0.5 * 0.05 + 0.5 * 0.05)


def _overconfident(n: int = 60, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """Tracks whose raw confidence is ~0.99 while only ~70 % are right."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    pred = np.where(rng.random(n) < 0.7, y, (y + 1) % 3)
    tracks = []
    for k in pred:
        p = np.full(3, 0.005)
        p[k] = 0.99
        tracks.append(p[None])
    return tracks, y


def test_fitted_temperature_cools_an_overconfident_model_and_cross_validation_holds_out() -> None:
    tracks, y = _overconfident()
    t = temperature.fit_temperature(tracks, y)
    assert t > 2.0
    calibrated = temperature.track_probabilities(tracks, Calibration(t))
    assert calibrated.max(1).mean() == pytest.approx(0.7, abs=0.08)
    cv = temperature.cross_validate(tracks, y, folds=5)
    report = cv.report(y)
    assert report["folds"] == 5 and len(cv.temperatures) == 5
    assert report["ece_calibrated"] < report["ece_raw"] - 0.1
    assert report["nll_calibrated"] < report["nll_raw"]


def test_chosen_rule_keeps_the_coverage_floor() -> None:
    rng = np.random.default_rng(1)
    conf = rng.uniform(0.34, 1.0, 200)
    y = np.zeros(200, int)
    pred = np.where(rng.random(200) < conf, 0, 1)
    probs = np.stack([np.where(pred == 0, conf, (1 - conf) / 2), np.where(pred == 1, conf, (1 - conf) / 2), (1 - conf) / 2], 1)
    rule = temperature.choose_rule(probs, y, min_coverage=0.6)
    s = temperature.selective(probs, y, rule)
    assert s.coverage >= 0.6 and rule != UncertaintyRule()
    assert s.precision > temperature.selective(probs, y, UncertaintyRule()).precision


def test_rule_curves_say_what_each_threshold_and_margin_costs_and_buys() -> None:
    rng = np.random.default_rng(2)
    probs = rng.dirichlet(np.full(3, 0.7), 300)
    y = np.where(rng.random(300) < probs.max(1), probs.argmax(1), (probs.argmax(1) + 1) % 3)  # right about as often as confident
    top = np.sort(probs, 1)[:, -1]
    lead = top - np.sort(probs, 1)[:, -2]
    right = probs.argmax(1) == y
    curves = temperature.rule_curves(probs, y)
    assert [p["threshold"] for p in curves["by_threshold"]] == list(temperature.CURVE_THRESHOLDS)
    for point in curves["by_threshold"]:
        answered = top >= point["threshold"]
        assert point["coverage"] == pytest.approx(answered.mean())
        assert point["precision"] == pytest.approx(right[answered].mean())
    for point in curves["by_margin"]:
        answered = lead >= point["margin"]
        assert point["coverage"] == pytest.approx(answered.mean()) and point["correct"] == int(right[answered].sum())
    coverage = [p["coverage"] for p in curves["by_threshold"]]
    assert coverage[0] == 1.0 and coverage == sorted(coverage, reverse=True) and coverage[-1] < 0.5
    precision = [p["precision"] for p in curves["by_threshold"]]
    assert precision[-1] > precision[0] + 0.1  # confident answers are the right ones more often


@pytest.mark.train
def test_evaluate_reports_ece_reliability_and_the_uncertain_rule(tmp_path: Path) -> None:
    from trainer.evaluate import evaluate
    from trainer.synthset import make_dataset

    make_dataset(tmp_path / "data", classes=3, clips=3, seconds=2.0, seed=0)
    labels = sorted(p.name for p in (tmp_path / "data").iterdir() if p.is_dir())
    cal = Calibration(temperature=3.0, uncertain_threshold=0.5)
    model = tiny_model(tmp_path / "m.onnx", ModelInfo(labels, FrontendConfig(window_frames=FRAMES), calibration=cal))
    report = evaluate(model, tmp_path / "data", tmp_path / "out", threads=1)
    assert (tmp_path / "out" / "reliability.png").stat().st_size > 1000
    assert report["calibration"]["temperature"] == 3.0
    conf = np.array([f["confidence"] for f in report["files"]])
    right = np.array([f["predicted"] == f["label"] for f in report["files"]])
    by_hand = sum(abs(right[m].mean() - conf[m].mean()) * m.mean()
                  for m in (np.ceil(conf * 10) == k for k in range(1, 11)) if m.any())
    assert report["ece"] == pytest.approx(by_hand)
    assert sum(b["count"] for b in report["reliability"]) == report["n"] == 9
    u = report["uncertain"]
    assert u["threshold"] == 0.5 and u["coverage"] == pytest.approx((conf >= 0.5).mean())
    if u["answered"]:
        assert u["precision"] == pytest.approx(right[conf >= 0.5].mean())
    for point in u["by_threshold"]:
        assert point["coverage"] == pytest.approx((conf >= point["threshold"]).mean())
        assert point["correct"] == int(right[conf >= point["threshold"]].sum())
    assert [p["margin"] for p in u["by_margin"]] == list(temperature.CURVE_MARGINS)


@pytest.mark.train
def test_evaluate_cli_prints_the_rule_curves(tmp_path: Path) -> None:
    from conftest import run_cli

    from trainer.synthset import make_dataset

    make_dataset(tmp_path / "data", classes=3, clips=2, seconds=2.0, seed=3)
    labels = sorted(p.name for p in (tmp_path / "data").iterdir() if p.is_dir())
    model = tiny_model(tmp_path / "m.onnx", ModelInfo(labels, FrontendConfig(window_frames=FRAMES), calibration=Calibration(temperature=2.0)))
    proc = run_cli("evaluate", str(model), str(tmp_path / "data"), "--json", module="trainer")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    proc = run_cli("evaluate", str(model), str(tmp_path / "data"), module="trainer")
    assert proc.returncode == 0, proc.stderr
    lines = {line.split(" -> ")[0].strip(): line for line in proc.stdout.splitlines() if " -> answered/precision: " in line}
    assert set(lines) == {"--uncertain-threshold", "--uncertain-margin"}
    for option, key in (("--uncertain-threshold", "by_threshold"), ("--uncertain-margin", "by_margin")):
        for point in report["uncertain"][key]:
            value = point[key.removeprefix("by_")]
            shown = "-" if not point["answered"] else f"{point['precision']:.2f}"
            assert f"{value:.2f}: {point['coverage']:.0%}/{shown}" in lines[option]


@pytest.mark.train
def test_fit_calibration_script_writes_only_the_metadata(tmp_path: Path) -> None:
    import csv

    from conftest import REPO, cli_env

    from trainer.synthset import make_dataset

    files = make_dataset(tmp_path / "data", classes=3, clips=4, seconds=2.0, seed=1)
    labels = sorted({p.parent.name for p in files})
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        for i, p in enumerate(files):
            w.writerow([p.relative_to(tmp_path), p.parent.name, "fit" if i % 4 else "other"])
    model = tiny_model(tmp_path / "m.onnx", ModelInfo(labels, FrontendConfig(window_frames=FRAMES), model_id="tiny"))
    before = onnx.load(str(model))
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "fit_calibration.py"), str(tmp_path / "labels.csv"), "--model", str(model),
                           "--where", "split=fit", "--report", "split=other", "--folds", "3", "--write"],
                          capture_output=True, text=True, env=cli_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)[str(model)]
    assert out["calibration"]["measurements"]["cross_validated"]["tracks"] == 9
    assert out["calibration"]["measurements"]["cross_validated"]["folds"] == 3
    assert out["report split=other"]["tracks"] == 3
    after = onnx.load(str(model))
    assert after.graph.SerializeToString() == before.graph.SerializeToString()
    info = open_engine(model, device="cpu", threads=1).info
    assert info.model_id == "tiny" and info.calibration is not None
    assert info.calibration.temperature == pytest.approx(out["calibration"]["temperature"])
