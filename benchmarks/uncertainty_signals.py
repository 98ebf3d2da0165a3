"""Issue 11, third round: does anything flag the bundled model's confident mistakes better than its own confidence?

Writes ``benchmarks/results/uncertainty_signals.json``. All 17 seed checkpoints
(``../shared/seed/checkpoints``, imported as ``genre-trainer import-keras`` does)
score the first 30 s window of every genre-dev clip (looped when shorter, the
bundled model's preprocessing). On the 33 real recordings outside GTZAN it
reports each checkpoint's accuracy, the accuracy of their mean, and how well
these signals separate the bundled model's right answers from its wrong ones:

* ``calibrated_top``: the bundled fp32 export's top probability, calibrated as the engine
  calibrates it (what the shipped "uncertain" rule uses);
* ``margin``: top minus second, calibrated;
* ``votes``: the share of the 17 checkpoints whose answer is the bundled one's;
* ``ensemble_probability``: the 17 checkpoints' mean probability of the bundled answer;
* ``gtzan_neighbours``: the share of the 5 GTZAN clips nearest to the clip (cosine, the
  bundled fp32 export's 32-d embedding) whose label is the bundled answer;
* ``mahalanobis_answer`` / ``mahalanobis_gap``: minus the clip's distance to the GTZAN
  clips' mean embedding of the answer's class, and the gap between its nearest and second
  nearest class means (shared covariance, shrunk by 0.1 of its mean variance): is the clip
  unlike the music the model was trained on?

Separation is the AUROC (right answers ranked above wrong ones), with a
bootstrap 95 % interval of each signal's difference to ``calibrated_top``
(2000 resamples of the 33 clips). No threshold is fitted, so nothing here is
judged on the data it was fitted on. GTZAN clips are the checkpoints' training data
and are reported for accuracy only.

    PYTHONPATH=. python benchmarks/uncertainty_signals.py [LABELS.csv] [--seed-dir ../shared/seed/checkpoints]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from genre_dev import DEFAULT_LABELS, read_labels  # noqa: E402
from machine import machine_info  # noqa: E402
from trust import softmax  # noqa: E402

from genre_stream.audio.decode import load_audio  # noqa: E402
from genre_stream.model.choice import open_engine
from genre_stream.audio.frontend import MelFrontend, loop_to_length  # noqa: E402
from trainer.keras_import import load_keras_bbnn  # noqa: E402

BUNDLED = "bbnn-gtzan-augmented-fold0"


def auroc(score: np.ndarray, right: np.ndarray) -> float:
    """P(a right answer scores above a wrong one), ties counted half."""
    pos, neg = score[right][:, None], score[~right][None, :]
    return float(np.mean((pos > neg) + 0.5 * (pos == neg)))


def embedding_signals(embeddings: np.ndarray, target: np.ndarray, gtzan: np.ndarray, answer: np.ndarray) -> dict[str, np.ndarray]:
    """How much each clip looks like the GTZAN clips of its answer's class (the model's training music)."""
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    nearest = np.argsort(-(unit @ unit[gtzan].T), axis=1)[:, :5]
    neighbours = (target[gtzan][nearest] == answer[:, None]).mean(1)
    ref, ref_target = embeddings[gtzan], target[gtzan]
    classes = np.unique(ref_target)
    means = np.stack([ref[ref_target == c].mean(0) for c in classes])
    cov = np.cov((ref - means[np.searchsorted(classes, ref_target)]).T)
    precision = np.linalg.inv(cov + 0.1 * np.trace(cov) / len(cov) * np.eye(len(cov)))
    diff = embeddings[:, None, :] - means[None]
    dist = np.einsum("nci,ij,ncj->nc", diff, precision, diff)
    ordered = np.sort(dist, axis=1)
    at_answer = np.array([dist[i, np.searchsorted(classes, a)] if a in classes else ordered[i, -1] for i, a in enumerate(answer)])
    return {"gtzan_neighbours": neighbours, "mahalanobis_answer": -at_answer, "mahalanobis_gap": ordered[:, 1] - ordered[:, 0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("labels", nargs="?", type=Path, default=DEFAULT_LABELS)
    parser.add_argument("--seed-dir", type=Path, default=REPO.parent / "shared" / "seed" / "checkpoints")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "uncertainty_signals.json")
    args = parser.parse_args()
    checkpoints = sorted(args.seed_dir.glob("*.hdf5"))
    if not args.labels.is_file() or not checkpoints:
        sys.exit(f"needs {args.labels} and the seed checkpoints in {args.seed_dir}")
    torch.set_num_threads(1)
    started = time.time()
    rows = read_labels(args.labels)
    frontend = MelFrontend()
    samples = frontend.config.window_samples
    windows = []
    for r in rows:
        audio = load_audio(args.labels.parent / r["path"])
        windows.append(frontend.window(loop_to_length(audio, samples) if audio.size < samples else audio))
    batch = torch.from_numpy(np.stack(windows))
    logits, labels = {}, None
    for path in checkpoints:
        model, labels = load_keras_bbnn(path)
        model.eval()
        with torch.no_grad():
            logits[path.stem] = torch.cat([model(batch[i:i + 8])[0] for i in range(0, len(batch), 8)]).numpy()
        print(f"{path.stem}: scored {len(rows)} clips", flush=True)
    assert labels is not None
    target = np.array([labels.index(r["label"]) for r in rows])
    gtzan = np.array([r["is_gtzan"] == "1" for r in rows])
    real = ~gtzan
    engine = open_engine("fp32", device="cpu", threads=1)  # the bundled model as classify runs it, calibration included
    if engine.labels != labels:
        sys.exit(f"the bundled model's labels {engine.labels} are not the checkpoints' {labels}")
    shipped = engine.predict(batch.numpy())
    bundled, embeddings = shipped.probabilities, shipped.embeddings
    answer = bundled.argmax(1)
    right = answer == target
    every = np.stack([softmax(z) for z in logits.values()])  # (checkpoints, clips, classes)
    ordered = np.sort(bundled, axis=1)
    signals = {
        "calibrated_top": ordered[:, -1],
        "margin": ordered[:, -1] - ordered[:, -2],
        "votes": (every.argmax(2) == answer[None]).mean(0),
        "ensemble_probability": every.mean(0)[np.arange(len(rows)), answer],
        **embedding_signals(embeddings, target, gtzan, answer),
    }
    rng = np.random.default_rng(0)
    idx = np.flatnonzero(real)
    resamples = [i for i in (rng.choice(idx, idx.size) for _ in range(2000)) if 0 < right[i].sum() < i.size]
    separation = {}
    for name, score in signals.items():
        diffs = [auroc(score[i], right[i]) - auroc(signals["calibrated_top"][i], right[i]) for i in resamples]
        separation[name] = {"auroc": round(auroc(score[real], right[real]), 3),
                            "minus_calibrated_top_95": [round(float(np.percentile(diffs, q)), 3) for q in (2.5, 97.5)]}
        order = np.argsort(-score[real], kind="stable")
        hits = right[real][order]
        separation[name]["precision_at_coverage"] = {f"{(k + 1) / idx.size:.2f}": round(float(hits[:k + 1].mean()), 2)
                                                     for k in range(idx.size // 2, idx.size, 2)}
    wrong = [{"clip": rows[i]["path"], "label": rows[i]["label"], "bundled": labels[answer[i]],
              "calibrated_top": round(float(signals["calibrated_top"][i]), 2), "votes": round(float(signals["votes"][i]), 2)}
             for i in np.flatnonzero(real & ~right)]
    result = {
        "benchmark": "uncertainty_signals",
        "data": f"genre-dev: {int(real.sum())} real non-GTZAN clips (judged), {int(gtzan.sum())} GTZAN clips (training data)",
        "temperature": engine.info.calibration.temperature,
        "accuracy": {name: {"non_gtzan": round(float(np.mean(z[real].argmax(1) == target[real])), 3),
                            "gtzan": round(float(np.mean(z[gtzan].argmax(1) == target[gtzan])), 3)} for name, z in logits.items()},
        "ensemble_mean_accuracy": {"non_gtzan": round(float(np.mean(every.mean(0)[real].argmax(1) == target[real])), 3),
                                   "gtzan": round(float(np.mean(every.mean(0)[gtzan].argmax(1) == target[gtzan])), 3)},
        "separation_right_from_wrong": separation,
        "bundled_wrong_non_gtzan": wrong,
        "seconds": round(time.time() - started, 1),
        "machine": machine_info(),
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("ensemble_mean_accuracy", "separation_right_from_wrong")}, indent=1))


if __name__ == "__main__":
    main()
