"""Fit each bundled export's music gate (the "not_music" answer) on real speech, noise and music.

    PYTHONPATH=. python scripts/fit_gate.py [--audio ../shared/audio] [--model fp32 --model int8] [--write]

Data (``../shared/audio``; measurement data, never committed): ``not-music/`` speech and noise
are "not music"; ``genre-dev/`` and ``emotify-dev/`` are music. ``speech_over_music`` clips (talk
over a bed, mostly artificial mixes) are reported, never trained on. Every 30 s window is cut and
embedded exactly as ``genre-stream classify`` does; a clip's score is the mean P(not music) of its
windows, as ``TrackResult.not_music`` computes it.

For each model: a logistic regression on the standardised 32-d embedding (C = 1, classes
balanced), cross-validated in 5 folds grouped by speaker where the source names one, else by
source package or repository, and by track for music, so no voice or source is in both halves.
The threshold is the lowest of a grid whose cross-validated share of music clips called
"not_music" is at most ``--max-music-rate`` (1 %: half the 2 % target, for a margin); the figures
at it (share of clips called "not_music" per kind, with Wilson 95 % intervals) go to
``benchmarks/results/music_gate.json`` and into the gate's ``measurements``. The final gate is
fitted on all the data, the standardisation folded into its weights; ``--write`` stores it in
the model's metadata (graph, weights and calibration untouched). Rebuilding a model keeps its
gate (``build_default_models.py``); refit it here afterwards, since the embedding moves.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from genre_stream.model.engine import Engine  # noqa: E402
from genre_stream.model.choice import open_engine
from genre_stream.audio.frontend import MelFrontend  # noqa: E402
from genre_stream.model.musicgate import MusicGate  # noqa: E402
from genre_stream.tracks.analysis import iter_audio, iter_windows  # noqa: E402
from trainer.onnx_meta import update_metadata  # noqa: E402
from trainer.metrics import wilson_interval  # noqa: E402

NOT_MUSIC = ("speech", "noise")  # trained as "not music"
REPORTED = ("speech", "noise", "speech_over_music", "music_gtzan", "music_other", "music_emotify")
THRESHOLDS = np.round(np.arange(0.30, 0.96, 0.05), 2)
FOLDS = 5
C = 1.0


def clips(audio: Path) -> list[tuple[Path, str, str]]:
    """(file, kind, group) for every clip of the three shared sets; exits naming what is missing."""
    out = []
    for sub in ("not-music", "genre-dev", "emotify-dev"):
        if not (audio / sub / "labels.csv").is_file():
            sys.exit(f"{audio / sub / 'labels.csv'}: not found (give --audio, the shared audio folder)")
    with open(audio / "not-music" / "labels.csv", newline="") as f:
        for r in csv.DictReader(f):
            source = r["source"].split("@")[0]
            speaker = re.search(r"speaker=([\w-]+)", r["notes"])
            out.append((audio / "not-music" / r["file"], r["kind"], source + (f":{speaker.group(1)}" if speaker else "")))
    with open(audio / "genre-dev" / "labels.csv", newline="") as f:
        for r in csv.DictReader(f):
            out.append((audio / "genre-dev" / r["path"], "music_gtzan" if r["is_gtzan"] == "1" else "music_other", "genre-dev:" + r["path"]))
    with open(audio / "emotify-dev" / "labels.csv", newline="") as f:
        for r in csv.DictReader(f):
            out.append((audio / "emotify-dev" / r["file"], "music_emotify", "emotify:" + r["source_path"]))
    return out


def window_embeddings(engine: Engine, files: list[Path], cache: Path | None) -> list[np.ndarray]:
    """Per file, the (windows, 32) embeddings classify computes (kept in ``cache``, keyed by the model's graph and
    weights, not its metadata, which ``--write`` changes)."""
    import hashlib

    import onnx

    graph = onnx.load(str(engine.path)).graph.SerializeToString()
    key = hashlib.sha256(graph + engine.info.normalization.encode() + "\n".join(map(str, files)).encode()).hexdigest()[:16]
    stored = cache / f"embeddings-{key}.npz" if cache else None
    if stored and stored.is_file():
        with np.load(stored) as data:
            return [data[str(i)] for i in range(len(files))]
    frontend = MelFrontend(engine.info.frontend)
    out = []
    for i, path in enumerate(files, 1):
        windows = np.stack([w for _, _, w in iter_windows(iter_audio(path, frontend.config.sample_rate), frontend,
                                                      normalization=engine.info.normalization)])
        out.append(engine.predict(windows, calibrated=False).embeddings)
        if i % 100 == 0:
            print(f"  {engine.path.name}: {i}/{len(files)} clips", file=sys.stderr, flush=True)
    if stored:
        stored.parent.mkdir(parents=True, exist_ok=True)
        np.savez(stored, **{str(i): e for i, e in enumerate(out)})
    return out


def fit(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """Logistic regression on standardised x; returns (weights, bias) on the raw embedding."""
    from sklearn.linear_model import LogisticRegression

    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-8
    clf = LogisticRegression(C=C, max_iter=5000, class_weight="balanced").fit((x - mean) / std, y)
    w = clf.coef_[0] / std
    return w, float(clf.intercept_[0] - np.dot(clf.coef_[0], mean / std))


def clip_scores(w: np.ndarray, b: float, embeddings: list[np.ndarray]) -> np.ndarray:
    gate = MusicGate(tuple(w), b)
    return np.array([float(gate.probability(e).mean()) for e in embeddings])


def cross_validated(embeddings: list[np.ndarray], kinds: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Each clip's P(not music) from the fold that did not train on its group (speech_over_music: all folds' mean)."""
    from sklearn.model_selection import GroupKFold

    trained = np.array([k in NOT_MUSIC or k.startswith("music") for k in kinds])
    scores = np.zeros(len(kinds))
    others = np.flatnonzero(~trained)
    idx = np.flatnonzero(trained)
    y = np.array([k in NOT_MUSIC for k in kinds[idx]], dtype=int)
    for train, test in GroupKFold(n_splits=FOLDS).split(idx, y, groups[idx]):
        x = np.concatenate([embeddings[i] for i in idx[train]])
        yy = np.concatenate([[y[j]] * len(embeddings[i]) for j, i in zip(train, idx[train])])
        w, b = fit(x, yy)
        scores[idx[test]] = clip_scores(w, b, [embeddings[i] for i in idx[test]])
        scores[others] += clip_scores(w, b, [embeddings[i] for i in others]) / FOLDS
    return scores


def rates(scores: np.ndarray, kinds: np.ndarray, threshold: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in REPORTED:
        m = kinds == kind
        k, n = int((scores[m] >= threshold).sum()), int(m.sum())
        lo, hi = wilson_interval(k, n)
        out[kind] = {"clips": n, "not_music": k, "rate": round(k / n, 4) if n else None, "interval95": [round(lo, 4), round(hi, 4)]}
    music = np.char.startswith(kinds.astype(str), "music")
    k, n = int((scores[music] >= threshold).sum()), int(music.sum())
    lo, hi = wilson_interval(k, n)
    out["music_all"] = {"clips": n, "not_music": k, "rate": round(k / n, 4), "interval95": [round(lo, 4), round(hi, 4)]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--audio", type=Path, default=REPO.parent / "shared" / "audio")
    parser.add_argument("--model", action="append", default=[], help="fp32, int8 or a path (default: both bundled exports)")
    parser.add_argument("--max-music-rate", type=float, default=0.01, help="highest cross-validated share of music clips called not_music")
    parser.add_argument("--write", action="store_true", help="store each model's gate in its metadata")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "music_gate.json")
    parser.add_argument("--cache", type=Path, help="folder to keep the embeddings in between runs (not committed)")
    args = parser.parse_args()
    rows = clips(args.audio)
    files = [r[0] for r in rows]
    kinds, groups = np.array([r[1] for r in rows]), np.array([r[2] for r in rows])
    counts = defaultdict(int)
    for k in kinds:
        counts[str(k)] += 1
    report: dict[str, Any] = {"clips": dict(counts), "folds": FOLDS, "grouping": "speaker, else source; music by track", "models": {}}
    for spec in args.model or ["fp32", "int8"]:
        engine = open_engine(spec, device="cpu", threads=2)
        embeddings = window_embeddings(engine, files, args.cache)
        scores = cross_validated(embeddings, kinds, groups)
        music = np.char.startswith(kinds.astype(str), "music")
        ok = [t for t in THRESHOLDS if (scores[music] >= t).mean() <= args.max_music_rate]
        if not ok:
            sys.exit(f"{engine.path.name}: no threshold keeps music clips called not_music at <= {args.max_music_rate}")
        threshold = float(min(ok))
        measured = rates(scores, kinds, threshold)
        trained = np.array([k in NOT_MUSIC or k.startswith("music") for k in kinds])
        x = np.concatenate([embeddings[i] for i in np.flatnonzero(trained)])
        y = np.concatenate([[int(kinds[i] in NOT_MUSIC)] * len(embeddings[i]) for i in np.flatnonzero(trained)])
        w, b = fit(x, y)
        fitted_on = (f"{counts['speech']} speech + {counts['noise']} noise clips (not-music) vs "
                     f"{int(music.sum())} music clips (genre-dev, emotify-dev); {FOLDS}-fold CV grouped by speaker/source")
        gate = MusicGate(tuple(round(float(v), 7) for v in w), round(b, 7), threshold, fitted_on,
                         {"cross_validated_clip_rates": measured, "max_music_rate": args.max_music_rate})
        report["models"][engine.path.name] = {"threshold": threshold, "clip_rates": measured}
        print(f"{engine.path.name}: threshold {threshold:.2f}")
        for kind, m in measured.items():
            print(f"  {kind:18s} {m['not_music']:4d}/{m['clips']:<4d} not_music = {m['rate']:.3f}  [{m['interval95'][0]:.3f}, {m['interval95'][1]:.3f}]")
        if args.write:
            update_metadata(engine.path, lambda data: data.__setitem__("gate", gate.to_dict()))
            print(f"  wrote the gate into {engine.path}")
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
