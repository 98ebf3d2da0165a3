"""Which int8 recipe knobs move int8's answers towards fp32's on real music (issue 15).

Writes ``benchmarks/results/int8_variants.json``. Each variant is quantised from
the seed checkpoint with ``trainer.quantize.quantize_int8``, calibrated on the
project's synthetic pieces (``trainer.synth``; ``--calibration synthetic``) or on
the real music the bundled int8 is built from (``--calibration real``: genre-dev's
50 GTZAN clips and the loose shared clips, exactly as scripts/build_default_models.py
picks them; never genre-dev's 33 other recordings), then every genre-dev window
(30 s, 10 s hop, as classify cuts them) is scored by it and by the bundled fp32
export (raw probabilities). With real calibration the GTZAN figures are in-sample. Per
group (GTZAN clips / other recordings): top-1 agreement of the track answers and
the mean / max over clips of each clip's largest |dp| -- the same figures as
``benchmarks/int8_agreement.py``. Speed of a variant is not measured here: pass
its saved file to ``benchmarks/inference.py --model NAME=PATH``.

    PYTHONPATH=. python benchmarks/int8_variants.py [--calibration real|synthetic] [--only NAME ...] [--save-dir DIR]

Slow on a shared 2-core machine (3-8 min per variant: calibration runs the whole
network on every calibration window).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from genre_stream.audio.decode import load_audio  # noqa: E402
from genre_stream.model.session import session_options  # noqa: E402
from genre_stream.audio.frontend import MelFrontend  # noqa: E402
from genre_stream.model.info import ModelInfo  # noqa: E402
from genre_stream.model.bundled import bundled_model_path  # noqa: E402
from genre_stream.tracks import TRACK_HOP_SECONDS  # noqa: E402
from genre_stream.tracks.analysis import iter_windows  # noqa: E402
from scripts.build_default_models import calibration_and_check_audio  # noqa: E402
from trainer.int8_windows import audio_windows, synthetic_sets  # noqa: E402
from trainer.keras_import import load_keras_bbnn  # noqa: E402
from trainer.quantize import Int8Config, quantize_int8  # noqa: E402

SHARED = REPO.parent / "shared"
SEED = SHARED / "seed" / "checkpoints" / "bbnn-gtzan-augmented-fold0.hdf5"
LABELS = SHARED / "audio" / "genre-dev" / "labels.csv"
HEAD = ("/model/ReduceMean", "/model/classifier/Gemm", "/Softmax")
VARIANTS: dict[str, tuple[int, Int8Config]] = {  # name: (synthetic calibration windows, recipe); real calibration uses all its windows
    "recipe (dead-channel rule + bias correction)": (96, Int8Config()),
    "recipe without bias correction": (96, Int8Config(bias_correction=False)),
    "channel ranges at the 99.99th percentile": (96, Int8Config(channel_percentile=99.99)),
    "192 calibration windows": (192, Int8Config()),
    "head (mean, dense, softmax) kept float: the bundled recipe": (96, Int8Config(keep_float=HEAD)),
    "head + average pool kept float": (96, Int8Config(keep_float=("/model/pool/", *HEAD))),
    "block 3 + transition kept float": (96, Int8Config(keep_float=("broadcast.2/", "transition"))),
    "block 3 kept float": (96, Int8Config(keep_float=("broadcast.2/",))),
    "transition kept float": (96, Int8Config(keep_float=("transition",))),
}


def dev_windows(frontend: MelFrontend) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every genre-dev window, the clip index of each, and each clip's is_gtzan flag."""
    with open(LABELS, newline="") as f:
        rows = list(csv.DictReader(f))
    windows, clip = [], []
    for i, r in enumerate(rows):
        audio = load_audio(LABELS.parent / r["path"], frontend.config.sample_rate)
        for _, _, w in iter_windows([audio], frontend, TRACK_HOP_SECONDS):
            windows.append(w)
            clip.append(i)
    return np.stack(windows), np.array(clip), np.array([r["is_gtzan"] for r in rows])


def probabilities(model: onnx.ModelProto | Path, windows: np.ndarray) -> np.ndarray:
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    sess = ort.InferenceSession(source, sess_options=session_options(1), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {"mel": w[None]})[0] for w in windows])


def figures(p: np.ndarray, ref: np.ndarray, clip: np.ndarray, gtzan: np.ndarray) -> dict[str, dict[str, float]]:
    out = {}
    for group, flag in (("gtzan", "1"), ("non_gtzan", "0")):
        ids = np.flatnonzero(gtzan == flag)
        top1 = np.mean([p[clip == c].mean(0).argmax() == ref[clip == c].mean(0).argmax() for c in ids])
        dp = np.array([np.abs(p[clip == c] - ref[clip == c]).max() for c in ids])
        out[group] = {"clips": int(len(ids)), "top1_agreement": round(float(top1), 4),
                      "mean_max_abs_dp": round(float(dp.mean()), 4), "max_max_abs_dp": round(float(dp.max()), 4)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calibration", choices=("real", "synthetic"), default="real")
    parser.add_argument("--only", action="append", default=None, help="run only the variant of this exact name (repeatable)")
    parser.add_argument("--save-dir", type=Path, default=None, help="keep each variant's .onnx here (for inference.py)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "int8_variants.json")
    args = parser.parse_args()
    if not (SEED.is_file() and LABELS.is_file()):
        sys.exit(f"needs {SEED} and {LABELS} (../shared); not present here")
    chosen = {k: v for k, v in VARIANTS.items() if not args.only or k in args.only}
    torch.set_num_threads(1)
    frontend = MelFrontend()
    windows, clip, gtzan = dev_windows(frontend)
    ref = probabilities(bundled_model_path("fp32"), windows)
    model, labels = load_keras_bbnn(SEED)
    info = ModelInfo(labels=labels, model_id=SEED.stem)
    if args.calibration == "real":
        music, _ = calibration_and_check_audio(SHARED / "audio")
        real, source = audio_windows(music, frontend)
    else:
        synthetic = synthetic_sets(frontend, max(n for n, _ in chosen.values()), 0).calibration
    rows = [{"variant": "bundled int8 file", **figures(probabilities(bundled_model_path("int8"), windows), ref, clip, gtzan)}]
    for name, (n, config) in chosen.items():
        started = time.perf_counter()
        if args.calibration == "real":
            n = len(real)
        proto = quantize_int8(model, info, real if args.calibration == "real" else synthetic[:n], config)
        if args.save_dir:
            args.save_dir.mkdir(parents=True, exist_ok=True)
            onnx.save(proto, str(args.save_dir / f"variant-{len(rows)}.onnx"))
        rows.append({"variant": name, "calibration_windows": n, **figures(probabilities(proto, windows), ref, clip, gtzan),
                     "seconds": round(time.perf_counter() - started, 1)})
        print(json.dumps(rows[-1]), flush=True)
    result = {"data": f"genre-dev: {len(gtzan)} clips, {len(windows)} windows, raw probabilities vs the bundled fp32",
              "calibration": source if args.calibration == "real" else "trainer.synth pieces, seeds 0..N-1 (never genre-dev)",
              "variants": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
