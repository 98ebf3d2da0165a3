"""Does a window-independent normalisation change the bundled model's answers on a radio-like stream?

Measurement for issue 23 (development data, never committed). Reads the cache of
``scripts/realmusic_experiment.py cache`` (``.data/realmusic/``; clips from ``../shared/audio``),
joins the clips of each set into 3-minute "radio" streams (six clips back to back, optionally each at
its own gain), cuts 30 s windows every 10 s, and classifies each window twice with the fp32 export:

* ``seed``: the seed normalisation of the window (dB below the window's loudest bin, floor 80 dB,
  divided by the window's own range): every window is scaled by its own statistics.
* ``running``: ``genre_stream.audio.normalization.running_normalize`` — each frame's dB below the loudest
  frame of the 30 s that end at it (the first 30 s of a stream use the loudest frame of the first 30 s),
  divided by a fixed 80 dB. A frame is normalised once, whatever window it falls in.

A window is scored against the clip that covers most of it. Writes JSON to
``benchmarks/results/normalization_streams_g<GAIN>.json`` and prints accuracy per set for both and how
often they agree. The model's own metadata normalisation is bypassed: windows are normalised here.

    PYTHONPATH=. python benchmarks/normalization_streams.py [--gain-db 10]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
OUT = REPO / ".data" / "realmusic"
W, HOP = 647, 215


def main() -> None:
    from genre_stream.audio.frontend import normalize_window
    from genre_stream.audio.normalization import running_normalize
    from genre_stream.model.choice import open_engine
    from trainer.metrics import wilson_interval

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="fp32")
    ap.add_argument("--gain-db", type=float, default=0.0, help="each clip at a random gain in +-this (dB)")
    ap.add_argument("--per-stream", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    meta = json.loads((OUT / "clips.json").read_text())
    z = np.load(OUT / "cache.npz")
    engine = open_engine(args.model, threads=args.threads)
    labels = engine.labels
    rng = np.random.default_rng(args.seed)
    sets: dict[str, list[int]] = {}
    for i, m in enumerate(meta):
        if m["label"] in labels:
            sets.setdefault(m["set"], []).append(i)
    rows = []
    for name, idx in sorted(sets.items()):
        idx = list(rng.permutation(idx))
        for s in range(0, len(idx) - args.per_stream + 1, args.per_stream):
            clips = idx[s : s + args.per_stream]
            parts = [z[str(meta[i]["idx"])][:W] * 10 ** (rng.uniform(-args.gain_db, args.gain_db) / 10) for i in clips]
            owner = np.concatenate([np.full(p.shape[0], k) for k, p in enumerate(parts)])
            power = np.concatenate(parts)
            running = running_normalize(power, W)
            starts = list(range(0, power.shape[0] - W + 1, HOP))
            seed_w = np.stack([normalize_window(power[t : t + W]) for t in starts])
            run_w = np.stack([running[t : t + W] for t in starts])
            ps = engine.predict(seed_w).probabilities
            pr = engine.predict(run_w).probabilities
            for j, t in enumerate(starts):
                k = int(np.bincount(owner[t : t + W]).argmax())
                truth = meta[clips[k]]["label"]
                rows.append({"set": name, "truth": truth, "start": t, "seed": labels[int(ps[j].argmax())],
                             "running": labels[int(pr[j].argmax())], "max_abs_dp": float(np.abs(ps[j] - pr[j]).max())})
    out = {"args": vars(args), "sets": {}}
    for name in sorted({r["set"] for r in rows}):
        rs = [r for r in rows if r["set"] == name]
        n = len(rs)
        res = {"windows": n}
        for key in ("seed", "running"):
            k = sum(r[key] == r["truth"] for r in rs)
            res[key] = {"right": k, "accuracy": k / n, "wilson95": wilson_interval(k, n)}
        res["same_answer"] = sum(r["seed"] == r["running"] for r in rs) / n
        res["median_max_abs_dp"] = float(np.median([r["max_abs_dp"] for r in rs]))
        out["sets"][name] = res
        print(f"{name:16s} {n:4d} windows  seed {res['seed']['accuracy']:.3f}  running {res['running']['accuracy']:.3f}"
              f"  same answer {res['same_answer']:.3f}  median max|dp| {res['median_max_abs_dp']:.3f}")
    (REPO / "benchmarks" / "results" / f"normalization_streams_g{args.gain_db:g}.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
