"""Measure "learn from corrections" (trainer/corrections.py) by cross-validation on labelled real music.

    PYTHONPATH=. python scripts/measure_corrections.py ../shared/audio/genre-dev/labels.csv \
        --out results.json [--folds 3 --repeats 2 --steps 60 --lr 3e-4 --augment --replay-batch 4 ...]

The tracks selected by ``--where`` (default ``is_gtzan=0``: real recordings the
bundled model never saw) are split into ``--folds`` stratified folds, ``--repeats``
times with different shuffles. For each fold the other folds play the user's
corrections (labelled tracks); the held-out fold plays the rest of the user's
library: its tracks are used *unlabelled* for distillation (as ``genre-trainer
finetune --library`` uses unlabelled library tracks) and then judged with their
labels. The ``--report`` tracks (default ``is_gtzan=1``) are never trained on;
their accuracy before and after says how much the model forgot.

Tracks are judged like ``classify`` judges them: 30 s windows every 10 s (one
window for a 30 s clip), mean of the window probabilities. Log-likelihoods use
the base model's calibration temperature, which ``finetune --library`` keeps.
Mel power frames are cached in ``--cache`` (an .npz) so repeated runs skip decoding.
The clips themselves are never copied anywhere else.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from genre_stream.model.calibration import Calibration  # noqa: E402
from genre_stream.model.engine import Engine  # noqa: E402
from genre_stream.model.choice import open_engine
from genre_stream.audio.frontend import MelFrontend, normalize_window  # noqa: E402
from genre_stream.model.info import ModelInfo  # noqa: E402
from genre_stream.tracks.analysis import window_starts  # noqa: E402
from trainer.augment import SpecAugmentConfig  # noqa: E402
from trainer.checkpoint import load_checkpoint  # noqa: E402
from trainer.corrections import CorrectionConfig, LabelledTrack, learn_corrections  # noqa: E402
from trainer.data import decode_clip  # noqa: E402
from trainer.export import to_onnx_model  # noqa: E402
from trainer.onnx_meta import save_atomic  # noqa: E402
from trainer.finetune import resolve_checkpoint  # noqa: E402
from trainer.metrics import cross_entropy  # noqa: E402

log = logging.getLogger("measure_corrections")
HOP_SECONDS = 10.0


def _select(rows: list[dict[str, str]], spec: str) -> list[int]:
    column, _, value = spec.partition("=")
    return [i for i, r in enumerate(rows) if r.get(column) == value]


def load_powers(labels_csv: Path, rows: list[dict[str, str]], frontend: MelFrontend, cache: Path | None) -> list[np.ndarray]:
    """Whole-track mel power frames of every row (from ``cache`` when it holds exactly these paths)."""
    paths = [r["path"] for r in rows]
    if cache is not None and cache.is_file():
        data = np.load(cache, allow_pickle=False)
        if list(data["paths"]) == paths:
            return [data[f"p{i}"] for i in range(len(paths))]
    powers = [decode_clip(labels_csv.parent / p, frontend)[0] for p in paths]
    if cache is not None:
        np.savez(cache, paths=np.array(paths), **{f"p{i}": p for i, p in enumerate(powers)})
    return powers


def onnx_engine(model: torch.nn.Module, info: ModelInfo, folder: Path) -> Engine:
    """The model as the runtime runs it (fp32 ONNX, bit-equal to PyTorch and several times faster on CPU)."""
    path = save_atomic(to_onnx_model(model, replace(info, calibration=None)), folder / "model.onnx")
    return open_engine(path, device="cpu", threads=1)


def track_probabilities(engine: Engine, power: np.ndarray, window: int, hop: int, top_db: float) -> np.ndarray:
    """Raw window probabilities (windows, classes) placed like classify places them."""
    windows = np.stack([normalize_window(power[s : s + window], top_db) for s in window_starts(len(power), window, hop)])
    return engine.predict(windows.astype(np.float32)).probabilities


def stratified_folds(labels: list[str], folds: int, seed: int) -> list[int]:
    """Fold number per track: each label's tracks shuffled and dealt round-robin, continuing across labels."""
    rng = np.random.default_rng(seed)
    fold = [0] * len(labels)
    k = int(rng.integers(folds))
    for label in sorted(set(labels)):
        members = [i for i, lab in enumerate(labels) if lab == label]
        for i in rng.permutation(members):
            fold[int(i)] = k % folds
            k += 1
    return fold


def judge(model: Engine, powers: list[np.ndarray], targets: np.ndarray, calibration: Calibration, window: int, hop: int, top_db: float) -> dict[str, Any]:
    raw = [track_probabilities(model, p, window, hop, top_db) for p in powers]
    cal = np.stack([calibration.apply(w).mean(axis=0) for w in raw])
    predicted = cal.argmax(axis=1)
    return {"correct": int((predicted == targets).sum()), "tracks": int(len(targets)), "predicted": predicted.tolist(),
            "nll_calibrated": cross_entropy(cal, targets)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("labels_csv", type=Path)
    parser.add_argument("--checkpoint", default="default")
    parser.add_argument("--where", default="is_gtzan=0", help="tracks that are cross-validated (corrections and held-out)")
    parser.add_argument("--report", default="is_gtzan=1", help="tracks only judged, to measure forgetting")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--steps", type=int, default=CorrectionConfig.steps)
    parser.add_argument("--lr", type=float, default=CorrectionConfig.lr)
    parser.add_argument("--freeze", default=CorrectionConfig.freeze)
    parser.add_argument("--batch-size", type=int, default=CorrectionConfig.batch_size)
    parser.add_argument("--replay-batch", type=int, default=CorrectionConfig.replay_batch)
    parser.add_argument("--distill-weight", type=float, default=CorrectionConfig.distill_weight)
    parser.add_argument("--window-frames", type=int, default=CorrectionConfig.window_frames)
    parser.add_argument("--augment", action="store_true", help="SpecAugment the crops (the trainer's default is off)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/measure_corrections_mel.npz"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(1)

    base, info, _ = load_checkpoint(resolve_checkpoint(args.checkpoint))
    calibration = open_engine().info.calibration if args.checkpoint == "default" else info.calibration
    calibration = calibration or Calibration(1.0)
    frontend = MelFrontend(info.frontend)
    with open(args.labels_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    cv_idx, report_idx = _select(rows, args.where), _select(rows, args.report)
    powers = load_powers(args.labels_csv, rows, frontend, args.cache)
    label_index = {lab: i for i, lab in enumerate(info.labels)}
    targets = np.array([label_index[r["label"]] for r in rows])
    window, top_db = info.frontend.window_frames, info.frontend.top_db
    hop = info.frontend.seconds_to_frames(HOP_SECONDS)
    config = CorrectionConfig(steps=args.steps, batch_size=args.batch_size, replay_batch=args.replay_batch,
                              distill_weight=args.distill_weight, lr=args.lr, window_frames=args.window_frames,
                              freeze=args.freeze, augment=SpecAugmentConfig() if args.augment else CorrectionConfig().augment)

    scratch = Path(tempfile.mkdtemp(prefix="measure_corrections-"))

    def judged(model: Engine, idx: list[int]) -> dict[str, Any]:
        return judge(model, [powers[i] for i in idx], targets[idx], calibration, window, hop, top_db)

    base_engine = onnx_engine(base, info, scratch)
    base_cv, base_report = judged(base_engine, cv_idx), judged(base_engine, report_idx)
    base_right = dict(zip(cv_idx, (np.array(base_cv["predicted"]) == targets[cv_idx]).tolist()))
    log.info("base model: %d/%d cross-validated tracks, %d/%d report tracks", base_cv["correct"], base_cv["tracks"], base_report["correct"], base_report["tracks"])
    folds_out = []
    for repeat in range(args.repeats):
        assignment = stratified_folds([rows[i]["label"] for i in cv_idx], args.folds, seed=repeat)
        for k in range(args.folds):
            train = [i for i, f in zip(cv_idx, assignment) if f != k]
            held = [i for i, f in zip(cv_idx, assignment) if f == k]
            started = time.monotonic()
            model = learn_corrections(base, [LabelledTrack(powers[i], int(targets[i])) for i in train],
                                      [powers[i] for i in held], replace(config, seed=repeat * 100 + k), top_db)
            engine = onnx_engine(model, info, scratch)
            held_res, report_res = judged(engine, held), judged(engine, report_idx)
            fold = {"repeat": repeat, "fold": k, "train_tracks": len(train), "heldout": held_res, "report": report_res,
                    "heldout_base_correct": int(sum(base_right[i] for i in held)),
                    "train_correct_after": judged(engine, train)["correct"], "seconds": round(time.monotonic() - started, 1)}
            log.info("repeat %d fold %d: held-out %d/%d (base %d), report %d/%d, train %d/%d, %.0f s", repeat, k,
                     held_res["correct"], len(held), fold["heldout_base_correct"], report_res["correct"], len(report_idx),
                     fold["train_correct_after"], len(train), fold["seconds"])
            folds_out.append(fold)

    def pooled(key: str, part: str) -> float:
        return sum(f[part][key] for f in folds_out) / sum(f[part]["tracks"] for f in folds_out)

    summary = {
        "data": str(args.labels_csv), "where": args.where, "report": args.report, "folds": args.folds, "repeats": args.repeats,
        "config": config.to_dict(), "base_calibration_temperature": calibration.temperature,
        "base": {"cv_accuracy": base_cv["correct"] / base_cv["tracks"], "report_accuracy": base_report["correct"] / base_report["tracks"],
                 "cv_nll_calibrated": base_cv["nll_calibrated"]},
        "tuned": {"heldout_accuracy": pooled("correct", "heldout"), "report_accuracy": pooled("correct", "report"),
                  "report_accuracy_min_fold": min(f["report"]["correct"] / f["report"]["tracks"] for f in folds_out),
                  "heldout_nll_calibrated_mean": float(np.mean([f["heldout"]["nll_calibrated"] for f in folds_out]))},
        "per_fold": folds_out,
    }
    summary["gain_points"] = round(100 * (summary["tuned"]["heldout_accuracy"] - summary["base"]["cv_accuracy"]), 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: summary[k] for k in ("base", "tuned", "gain_points")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
