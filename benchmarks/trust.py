"""Issue 11, second round: calibration, "uncertain" and learning from corrections beyond what ships, cross-validated.

Writes ``benchmarks/results/trust.json``. Every figure comes from genre-dev's
labelled clips, with the two parts kept apart: the 33 real recordings outside
GTZAN (``is_gtzan=0``; everything is fitted and judged on these, always held out)
and the 50 GTZAN clips the bundled model trained on (``is_gtzan=1``; only
reported, with fits made on all 33 real clips: training-set figures).

Each clip is classified once, the way ``genre-stream classify`` does it
(``tracks.analyse_file`` + ``Engine``, raw softmax: the stored calibration is
removed), keeping the window probabilities and the 32-d embedding; in addition
its first 30 s window is cut into 10 s crops every 5 s (5 crops), which the
fully convolutional network also scores. The crops give a second opinion for
free on a 30 s clip, where classify has a single window and so no window
disagreement to use. The same crops on a grid one frame shorter show how
stable answers built from crops are. Everything after that is numpy on the
cached numbers (``--cache``: delete it when a model file changes).

``calibration`` (per model, leave-one-out over the 33 real clips; thresholds of
the "uncertain" rule chosen inside each fold as ``trainer.temperature`` does):

* ``temperature``: what ships (``trainer.temperature.fit``);
* ``temperature_bias``: temperature plus a per-class bias with a Gaussian prior,
  its strength chosen by an inner 4-fold CV;
* ``top_label_platt``: only the confidence of the answer is recalibrated,
  ``P(right) = sigmoid(a * logit(conf) + c)``; with ``_crop_agreement`` also the
  share of crops that agree with the answer as a feature;
* ``temperature_crop_mean``: temperature scaling of the mean of the crops'
  probabilities instead of the 30 s window's (a change of scoring, not only of
  calibration: its accuracy differs).

``uncertain_rule``: the shipped rule (top probability, margin) against the same
rule with a third condition on crop agreement or on the crops' mean total
variation distance from the window, all chosen inside each LOO fold.

``corrections`` (fp32): a personal head on the embeddings instead of a
fine-tuned network, 3-fold stratified CV repeated ``--repeats`` times: per fold
the other two folds are the user's labelled tracks, the held-out fold is judged,
and the GTZAN clips show what is forgotten. Heads: per-class bias only; the
bundled dense layer re-fitted with a Gaussian prior centred on it (MAP logistic
regression); the bundled logits blended with a nearest-class-mean score. Each
head's strength is chosen by an inner CV on the labelled tracks only.

A proportion over 33 clips carries about +-0.08 of sampling noise (one clip is 3
points); ``ece_noise_floor`` is the ECE a perfectly calibrated model would show.

    PYTHONPATH=. python benchmarks/trust.py [LABELS.csv] [--model fp32 --model int8] [--cache DIR] [--repeats 10]
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import minimize

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from genre_dev import DEFAULT_LABELS, read_labels  # noqa: E402

from genre_stream.audio.decode import load_audio  # noqa: E402
from genre_stream.model.calibration import Calibration, UncertaintyRule  # noqa: E402
from genre_stream.model.engine import Engine  # noqa: E402
from genre_stream.model.choice import open_engine
from genre_stream.audio.frontend import MelFrontend, loop_to_length, normalize_window  # noqa: E402
from genre_stream.tracks.analysis import analyse_file  # noqa: E402
from trainer import temperature  # noqa: E402
from trainer.metrics import cross_entropy, expected_calibration_error, reliability_bins  # noqa: E402

CROP_SECONDS, CROP_HOP_SECONDS, CROPS = 10.0, 5.0, 5
AGREEMENTS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
BIAS_PRIORS = (0.01, 0.03, 0.1, 0.3, 1.0)  # lambda of lambda * ||b||^2 (temperature_bias)
HEAD_PRIORS = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)  # lambda of the MAP heads
NCM_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)  # beta of the nearest-class-mean blend
Fit = Callable[[np.ndarray], Callable[[np.ndarray], np.ndarray]]  # train indices -> (indices -> probabilities)


@dataclass
class Clips:
    """What the experiments need of each clip, computed once per model."""

    paths: list[str]
    targets: np.ndarray  # (n,) label index
    gtzan: np.ndarray  # (n,) bool
    windows: list[np.ndarray]  # raw window probabilities (windows, classes), as classify computes them
    embeddings: np.ndarray  # (n, 32) mean over windows
    crops: np.ndarray  # (n, CROPS, classes) raw probabilities of the 10 s crops
    crop_embeddings: np.ndarray  # (n, CROPS, 32)
    crops_shifted: np.ndarray  # (n, CROPS, classes) the same with a hop one frame shorter: how stable crop answers are

    @property
    def track(self) -> np.ndarray:
        return temperature.track_probabilities(self.windows, None)


def read_clips(engine: Engine, labels_csv: Path, rows: list[dict[str, str]], cache: Path | None) -> Clips:
    if cache is not None and cache.is_file():
        data = np.load(cache, allow_pickle=False)
        if list(data["paths"]) == [r["path"] for r in rows] and "crops_shifted" in data.files:
            return Clips(list(data["paths"]), data["targets"], data["gtzan"], [data[f"w{i}"] for i in range(len(rows))],
                         data["embeddings"], data["crops"], data["crop_embeddings"], data["crops_shifted"])
    engine.info = replace(engine.info, calibration=None)
    frontend = MelFrontend(engine.info.frontend)
    c = frontend.config
    crop, hop = c.seconds_to_frames(CROP_SECONDS), c.seconds_to_frames(CROP_HOP_SECONDS)
    index = {label: i for i, label in enumerate(engine.labels)}
    windows, embeddings, crops, crop_embeddings, shifted = [], [], [], [], []
    for r in rows:
        path = labels_csv.parent / r["path"]
        result = analyse_file(path, engine)
        windows.append(np.stack([w.probabilities for w in result.windows]))
        embeddings.append(result.embedding)
        audio = load_audio(path, c.sample_rate)
        power = frontend.power(loop_to_length(audio, c.window_samples) if audio.size < c.window_samples else audio)[: c.window_frames]
        pred = engine.predict(np.stack([normalize_window(power[s : s + crop], c.top_db) for s in range(0, CROPS * hop, hop)]), calibrated=False)
        crops.append(pred.probabilities)
        crop_embeddings.append(pred.embeddings)
        starts = range(0, CROPS * (hop - 1), hop - 1)
        shifted.append(engine.predict(np.stack([normalize_window(power[s : s + crop], c.top_db) for s in starts]), calibrated=False).probabilities)
    clips = Clips([r["path"] for r in rows], np.array([index[r["label"]] for r in rows]), np.array([r["is_gtzan"] == "1" for r in rows]),
                  windows, np.stack(embeddings), np.stack(crops), np.stack(crop_embeddings), np.stack(shifted))
    if cache is not None:
        np.savez(cache, paths=np.array(clips.paths), targets=clips.targets, gtzan=clips.gtzan, embeddings=clips.embeddings,
                 crops=clips.crops, crop_embeddings=clips.crop_embeddings, crops_shifted=clips.crops_shifted, **{f"w{i}": w for i, w in enumerate(windows)})
    return clips


# ---------------------------------------------------------------- calibration methods


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def log_floor(p: np.ndarray, floor: float) -> np.ndarray:
    return np.log(np.clip(p, floor, 1.0))


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p) - np.log1p(-p)


def fit_temperature_bias(logits: np.ndarray, targets: np.ndarray, prior: float) -> tuple[float, np.ndarray]:
    """softmax(logits / T + b) by maximum a posteriori: NLL + prior * ||b||^2 (T free, on a log scale)."""
    n, k = logits.shape
    rows = np.arange(n)

    def loss(x: np.ndarray) -> tuple[float, np.ndarray]:
        t, b = np.exp(x[0]), x[1:]
        q = softmax(logits / t + b)
        value = -np.mean(np.log(np.clip(q[rows, targets], 1e-12, 1))) + prior * float(b @ b)
        dz = q.copy()
        dz[rows, targets] -= 1
        dz /= n
        return value, np.concatenate([[-(dz * logits / t).sum()], dz.sum(axis=0) + 2 * prior * b])

    x = minimize(loss, np.concatenate([[np.log(2.0)], np.zeros(k)]), jac=True, method="L-BFGS-B").x
    return float(np.exp(x[0])), x[1:]


def fit_platt(features: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """Logistic regression of "the answer is right" on ``features`` (n, f) plus an intercept (tiny ridge for stability)."""
    x = np.column_stack([features, np.ones(len(features))])
    y = correct.astype(float)

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        s = 1 / (1 + np.exp(-(x @ w)))
        value = -np.mean(y * np.log(np.clip(s, 1e-12, 1)) + (1 - y) * np.log(np.clip(1 - s, 1e-12, 1))) + 1e-3 * float(w[:-1] @ w[:-1])
        grad = x.T @ (s - y) / len(y)
        grad[:-1] += 2e-3 * w[:-1]
        return value, grad

    return minimize(loss, np.zeros(x.shape[1]), jac=True, method="L-BFGS-B").x


def top_label(probabilities: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """The answer keeps its genre with ``confidence``; the rest is spread evenly (the answer stays the top one)."""
    k = probabilities.shape[1]
    confidence = np.clip(confidence, 1 / k + 1e-6, 1.0)
    out = np.repeat(((1 - confidence) / (k - 1))[:, None], k, axis=1)
    out[np.arange(len(out)), probabilities.argmax(axis=1)] = confidence
    return out


def crop_agreement(clips: Clips) -> np.ndarray:
    """Share of a clip's crops whose answer is the clip's answer."""
    return (clips.crops.argmax(axis=2) == clips.track.argmax(axis=1)[:, None]).mean(axis=1)


def crop_similarity(clips: Clips) -> np.ndarray:
    """1 - mean total variation distance between each crop's probabilities and the clip's."""
    return 1 - 0.5 * np.abs(clips.crops - clips.track[:, None]).sum(axis=2).mean(axis=1)


def calibration_methods(clips: Clips, floor: float) -> dict[str, Fit]:
    targets = clips.targets
    raw_logits = log_floor(clips.track, floor)
    crop_logits = log_floor(clips.crops.mean(axis=1), floor)
    agreement = crop_agreement(clips)

    def temperature_fit(train: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        cal = Calibration(temperature.fit_temperature([clips.windows[i] for i in train], targets[train], floor), floor)
        return lambda idx: temperature.track_probabilities([clips.windows[i] for i in idx], cal)

    def temperature_bias_fit(train: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        prior = _inner_choice(train, targets, BIAS_PRIORS, lambda tr, te, lam: -cross_entropy(
            _apply_tb(fit_temperature_bias(raw_logits[tr], targets[tr], lam), raw_logits[te]), targets[te]))
        params = fit_temperature_bias(raw_logits[train], targets[train], prior)
        return lambda idx: _apply_tb(params, raw_logits[idx])

    def platt(extra: np.ndarray | None) -> Fit:
        def features(idx: np.ndarray) -> np.ndarray:
            f = [logit(clips.track[idx].max(axis=1))]
            return np.column_stack(f + ([extra[idx]] if extra is not None else []))

        def fit(train: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
            w = fit_platt(features(train), clips.track[train].argmax(axis=1) == targets[train])
            return lambda idx: top_label(clips.track[idx], 1 / (1 + np.exp(-(np.column_stack([features(idx), np.ones(len(idx))]) @ w))))
        return fit

    def crop_mean_fit(train: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        t = min(temperature.TEMPERATURES, key=lambda t: cross_entropy(softmax(crop_logits[train] / t), targets[train]))
        return lambda idx: softmax(crop_logits[idx] / t)

    return {"temperature": temperature_fit, "temperature_bias": temperature_bias_fit, "top_label_platt": platt(None),
            "top_label_platt_crop_agreement": platt(agreement), "temperature_crop_mean": crop_mean_fit}


def _apply_tb(params: tuple[float, np.ndarray], logits: np.ndarray) -> np.ndarray:
    return softmax(logits / params[0] + params[1])


def stratified_folds(targets: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold number of each item: each class dealt round-robin from a random start, so every fold sees most classes."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(targets), dtype=int)
    for c in np.unique(targets):
        members = np.flatnonzero(targets == c)
        fold[rng.permutation(members)] = (np.arange(len(members)) + rng.integers(k)) % k
    return fold


def _inner_choice(train: np.ndarray, targets: np.ndarray, grid: tuple[float, ...], score: Callable[[np.ndarray, np.ndarray, float], float],
                  k: int = 4) -> float:
    """The grid value with the best summed ``score(inner_train, inner_test, value)`` over a k-fold split of ``train`` only."""
    fold = stratified_folds(targets[train], k, seed=12345)
    totals = [sum(score(train[fold != f], train[fold == f], v) for f in range(k) if (fold == f).any()) for v in grid]
    return grid[int(np.argmax(totals))]


# ---------------------------------------------------------------- the "uncertain" rule with a third signal


def rule_mask(probabilities: np.ndarray, signal: np.ndarray, rule: tuple[float, float, float]) -> np.ndarray:
    """Answered (not uncertain): the shipped UncertaintyRule and ``signal >= rule[2]``."""
    return ~UncertaintyRule(rule[0], rule[1]).uncertain_mask(probabilities) & (signal >= rule[2])


def choose_rule(probabilities: np.ndarray, targets: np.ndarray, signal: np.ndarray, agreements: tuple[float, ...]) -> tuple[float, float, float]:
    """As ``temperature.choose_rule`` (most precise with coverage >= MIN_COVERAGE), over a third threshold too."""
    best: tuple[tuple[float, ...], tuple[float, float, float]] | None = None
    correct = probabilities.argmax(axis=1) == targets
    for t, m, a in itertools.product(temperature.THRESHOLDS, temperature.MARGINS, agreements):
        rule = (float(t), float(m), float(a))
        answered = rule_mask(probabilities, signal, rule)
        if answered.mean() < temperature.MIN_COVERAGE or not answered.any():
            continue
        key = (correct[answered].mean(), answered.mean(), -rule[0], -rule[1], -rule[2])
        if best is None or key > best[0]:
            best = (key, rule)
    return best[1] if best else (0.0, 0.0, 0.0)


# ---------------------------------------------------------------- figures


def figures(q: np.ndarray, targets: np.ndarray, answered: np.ndarray) -> dict[str, Any]:
    """Held-out probabilities ``q`` and "uncertain" decisions: accuracy, calibration, what the rule costs and buys."""
    correct = q.argmax(axis=1) == targets
    return {
        "accuracy": float(correct.mean()),
        "ece_10_bins": expected_calibration_error(q, targets, 10),
        "ece_5_bins": expected_calibration_error(q, targets, 5),
        "ece_noise_floor_10_bins": temperature.ece_noise_floor(q, 10, draws=500),
        "nll": cross_entropy(q, targets),
        "brier": float(np.mean(((q - np.eye(q.shape[1])[targets]) ** 2).sum(axis=1))),
        "mean_confidence": float(q.max(axis=1).mean()),
        "rule_coverage": float(answered.mean()),
        "rule_precision": float(correct[answered].mean()) if answered.any() else float("nan"),
        "rule_answered_right": f"{int(correct[answered].sum())}/{int(answered.sum())}",
        "rule_curves": temperature.rule_curves(q, targets),
        "reliability": reliability_bins(q, targets, 10),
    }


def leave_one_out(fit: Fit, real: np.ndarray, targets: np.ndarray, signal: np.ndarray, agreements: tuple[float, ...],
                  n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Held-out probabilities and rule decisions of each real clip, fit and rule chosen without it."""
    q = np.zeros((len(real), n_classes))
    answered = np.zeros(len(real), dtype=bool)
    for i in range(len(real)):
        train = np.delete(real, i)
        predict = fit(train)
        rule = choose_rule(predict(train), targets[train], signal[train], agreements)
        q[i] = predict(real[i : i + 1])[0]
        answered[i] = rule_mask(q[i : i + 1], signal[real[i : i + 1]], rule)[0]
    return q, answered


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def calibration_report(clips: Clips, n_classes: int) -> dict[str, Any]:
    floor = temperature.DEFAULT_FLOOR if not any((w == 0).any() for w in clips.windows) else float(
        min(w[w > 0].min() for w in clips.windows) / 2)
    real, gtzan = np.flatnonzero(~clips.gtzan), np.flatnonzero(clips.gtzan)
    targets = clips.targets
    out: dict[str, Any] = {"log_floor": floor}
    never = np.ones(len(targets))
    raw = clips.track[real]
    out["raw"] = figures(raw, targets[real], np.ones(len(real), dtype=bool))
    for name, fit in calibration_methods(clips, floor).items():
        q, answered = leave_one_out(fit, real, targets, never, (0.0,), n_classes)
        entry = {"non_gtzan_loo": figures(q, targets[real], answered)}
        predict = fit(real)  # fitted on all 33 real clips, judged on the GTZAN (training) clips
        rule = choose_rule(predict(real), targets[real], never[real], (0.0,))
        qg = predict(gtzan)
        entry["gtzan_fit_on_all_real"] = {k: v for k, v in figures(qg, targets[gtzan], rule_mask(qg, never[gtzan], rule)).items()
                                          if k not in ("reliability", "rule_curves", "ece_noise_floor_10_bins")}
        entry["rule_fit_on_all_real"] = {"threshold": rule[0], "margin": rule[1]}
        out[name] = entry
    rules: dict[str, Any] = {}
    shipped = calibration_methods(clips, floor)["temperature"]
    for name, signal in (("top_margin", never), ("top_margin_crop_agreement", crop_agreement(clips)),
                         ("top_margin_crop_similarity", crop_similarity(clips))):
        grid = (0.0,) if name == "top_margin" else AGREEMENTS if name.endswith("agreement") else tuple(np.round(np.arange(0.5, 1.0, 0.05), 2))
        q, answered = leave_one_out(shipped, real, targets, signal, grid, n_classes)
        f = figures(q, targets[real], answered)
        rules[name] = {k: f[k] for k in ("rule_coverage", "rule_precision", "rule_answered_right")}
    out["uncertain_rule_loo"] = rules
    return out


# ---------------------------------------------------------------- learning from corrections: personal heads


def dense_layer(model_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(W, b) of the export's last Gemm (embedding -> logits)."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(model_path))
    gemm = [n for n in proto.graph.node if n.op_type == "Gemm"][-1]
    init = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in proto.graph.initializer}
    return init[gemm.input[1]], init[gemm.input[2]]


def fit_map_head(x: np.ndarray, t: np.ndarray, w0: np.ndarray, b0: np.ndarray, prior: float, bias_only: bool) -> tuple[np.ndarray, np.ndarray]:
    """Logistic regression on embeddings with a Gaussian prior centred on the bundled layer (W0, b0)."""
    k, d = w0.shape
    n = len(t)
    rows = np.arange(n)

    def unpack(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (np.zeros((k, d)) if bias_only else v[k:].reshape(k, d)), v[:k]

    def loss(v: np.ndarray) -> tuple[float, np.ndarray]:
        dw, db = unpack(v)
        q = softmax(x @ (w0 + dw).T + b0 + db)
        value = -np.mean(np.log(np.clip(q[rows, t], 1e-12, 1))) + prior * float((dw**2).sum() + db @ db)
        dz = q.copy()
        dz[rows, t] -= 1
        dz /= n
        gb = dz.sum(axis=0) + 2 * prior * db
        return value, gb if bias_only else np.concatenate([gb, (dz.T @ x + 2 * prior * dw).ravel()])

    v = minimize(loss, np.zeros(k if bias_only else k + k * d), jac=True, method="L-BFGS-B", options={"maxiter": 500}).x
    dw, db = unpack(v)
    return w0 + dw, b0 + db


def ncm_head(x: np.ndarray, t: np.ndarray, w0: np.ndarray, b0: np.ndarray, beta: float) -> tuple[np.ndarray, np.ndarray]:
    """Bundled logits + beta * (-||e - mean_c||^2 / spread), which is linear in e (the ||e||^2 term is the same for all classes).

    Genres without a labelled track get the mean of the labelled genres' scores (no pull either way).
    """
    k, d = w0.shape
    spread = float(np.mean(((x - x.mean(axis=0)) ** 2).sum(axis=1)))
    present = np.unique(t)
    means = np.stack([x[t == c].mean(axis=0) for c in present])
    wn, bn = np.zeros((k, d)), np.zeros(k)
    wn[present], bn[present] = 2 * means / spread, -(means**2).sum(axis=1) / spread
    missing = np.setdiff1d(np.arange(k), present)
    wn[missing], bn[missing] = wn[present].mean(axis=0), bn[present].mean()
    return w0 + beta * wn, b0 + beta * bn


def corrections_report(clips: Clips, model_path: Path, repeats: int) -> dict[str, Any]:
    w0, b0 = dense_layer(model_path)
    real, gtzan = np.flatnonzero(~clips.gtzan), np.flatnonzero(clips.gtzan)
    emb, targets = clips.embeddings.astype(np.float64), clips.targets
    crop_emb = clips.crop_embeddings.astype(np.float64)

    def training_set(idx: np.ndarray, crops: bool) -> tuple[np.ndarray, np.ndarray]:
        if not crops:
            return emb[idx], targets[idx]
        return np.concatenate([emb[idx], crop_emb[idx].reshape(-1, emb.shape[1])]), np.concatenate([targets[idx], np.repeat(targets[idx], CROPS)])

    def head(kind: str, crops: bool) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
        grid = NCM_WEIGHTS if kind == "ncm" else HEAD_PRIORS

        def build(idx: np.ndarray, v: float) -> tuple[np.ndarray, np.ndarray]:
            x, t = training_set(idx, crops)
            return ncm_head(x, t, w0, b0, v) if kind == "ncm" else fit_map_head(x, t, w0, b0, v, kind == "bias")

        def fit(train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            def score(tr: np.ndarray, te: np.ndarray, v: float) -> float:
                w, b = build(tr, v)
                return float(((emb[te] @ w.T + b).argmax(axis=1) == targets[te]).sum())
            return build(train, _inner_choice(train, targets, grid, score, k=3))
        return fit

    heads = {"bundled": lambda train: (w0, b0), "bias_only": head("bias", False), "map_logistic": head("map", False),
             "map_logistic_crop_embeddings": head("map", True), "ncm_blend": head("ncm", False), "ncm_blend_crop_embeddings": head("ncm", True)}
    out: dict[str, Any] = {"protocol": f"3-fold stratified CV over the {len(real)} non-GTZAN clips, {repeats} shuffles; "
                                       "strength chosen by inner 3-fold CV on the training folds; GTZAN clips never trained on"}
    for name, fit in heads.items():
        right, gtzan_acc = [], []
        for seed in range(repeats):
            fold = stratified_folds(targets[real], 3, seed)
            n_right = 0
            for f in range(3):
                w, b = fit(real[fold != f])
                test = real[fold == f]
                n_right += int(((emb[test] @ w.T + b).argmax(axis=1) == targets[test]).sum())
                gtzan_acc.append(float(((emb[gtzan] @ w.T + b).argmax(axis=1) == targets[gtzan]).mean()))
            right.append(n_right)
        out[name] = {"non_gtzan_right_per_shuffle": right, "non_gtzan_accuracy_mean": float(np.mean(right)) / len(real),
                     "non_gtzan_accuracy_min": min(right) / len(real), "non_gtzan_accuracy_max": max(right) / len(real),
                     "gtzan_accuracy_mean": float(np.mean(gtzan_acc)), "gtzan_accuracy_min_fold": min(gtzan_acc)}
    out["crop_mean_scoring_no_labels"] = {}
    for name, crops in (("hop_5s", clips.crops), ("hop_5s_minus_one_frame", clips.crops_shifted)):
        answer = crops.mean(axis=1).argmax(axis=1) == targets
        out["crop_mean_scoring_no_labels"][name] = {"non_gtzan_accuracy": float(answer[real].mean()), "gtzan_accuracy": float(answer[gtzan].mean())}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("labels_csv", type=Path, nargs="?", default=DEFAULT_LABELS)
    parser.add_argument("--model", action="append", default=None, help="fp32 / int8 / ONNX path (repeatable; default fp32 and int8)")
    parser.add_argument("--cache", type=Path, default=None, help="folder for the per-clip numbers (reruns skip classification)")
    parser.add_argument("--repeats", type=int, default=10, help="shuffles of the 3-fold corrections CV")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "trust.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = read_labels(args.labels_csv)
    started = time.perf_counter()
    result: dict[str, Any] = {"labels_csv": f"{args.labels_csv.parent.name}/{args.labels_csv.name}",
                              "non_gtzan_clips": sum(r["is_gtzan"] == "0" for r in rows), "gtzan_clips": sum(r["is_gtzan"] == "1" for r in rows),
                              "crops": f"{CROPS} crops of {CROP_SECONDS:g} s every {CROP_HOP_SECONDS:g} s of the first 30 s window"}
    for spec in args.model or ["fp32", "int8"]:
        engine = open_engine(spec, device="cpu", threads=1)
        if args.cache:
            args.cache.mkdir(parents=True, exist_ok=True)
        clips = read_clips(engine, args.labels_csv, rows, args.cache / f"{engine.path.stem}.npz" if args.cache else None)
        entry: dict[str, Any] = {"file": engine.path.name, "calibration": calibration_report(clips, len(engine.labels))}
        if engine.precision == "fp32":
            entry["corrections"] = corrections_report(clips, engine.path, args.repeats)
        result[spec] = _rounded(entry)
        print(json.dumps({spec: {k: v for k, v in result[spec]["calibration"].items() if k == "uncertain_rule_loo"}}))
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=float) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
