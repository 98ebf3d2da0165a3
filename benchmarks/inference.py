"""Per-window inference speed and int8 accuracy: PyTorch eager vs ONNX Runtime fp32 vs int8 variants.

Writes ``benchmarks/results/inference.json``. Everything is measured in one run
on this machine with 2 threads, one 30 s window per call (the live daemon's
case), so the ratios against the eager and ORT-fp32 baselines are meaningful
even when absolute times drift with machine load. Timings interleave the
variants round by round for the same reason.

Accuracy is measured against the fp32 model on three separate window sets:
``clips`` (the shared real clips at many offsets: the issue-7 evaluation set),
``mixes`` (pairs of those clips mixed: ambiguous windows, a stress test) and
``synthetic`` (held-out ``trainer.synth`` pieces). No set is used for calibration.

    PYTHONPATH=. python benchmarks/inference.py [--rounds 15] [--quick]

Needs ``../shared`` (seed checkpoint, clips); it exits with a message without it.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from genre_stream.audio import load_audio  # noqa: E402
from genre_stream.models import bundled_model_path  # noqa: E402
from genre_stream.frontend import MelFrontend  # noqa: E402
from genre_stream.modelinfo import ModelInfo  # noqa: E402
from trainer.calibration import offset_windows, synthetic_sets  # noqa: E402
from trainer.export import torch_probabilities  # noqa: E402
from trainer.keras_import import load_keras_bbnn  # noqa: E402
from trainer.quantize import AccuracyBar, Int8Config, agreement, onnx_probabilities, quantize_int8, session  # noqa: E402

SHARED = REPO.parent / "shared"
SEED = SHARED / "seed" / "checkpoints" / "bbnn-gtzan-augmented-fold0.hdf5"
CLIPS = ["gtzan-country.00000.wav", "jtd-jazz-trio-5s.wav", "seed-example-rock.mp3"]
THREADS = 2


def _shifted(audio: np.ndarray, offset: int, length: int) -> np.ndarray:
    reps = int(np.ceil((offset + length) / audio.size)) + 1
    return np.tile(audio, reps)[offset : offset + length]


def eval_sets(frontend: MelFrontend) -> dict[str, np.ndarray]:
    tracks = [load_audio(SHARED / "audio" / name, frontend.config.sample_rate) for name in CLIPS]
    clips = np.concatenate([offset_windows(a, frontend, 24, phase=0.25) for a in tracks])
    rng = np.random.default_rng(0)
    mixes = []
    for i in range(len(tracks)):
        for j in range(i + 1, len(tracks)):
            for _ in range(8):
                a = _shifted(tracks[i], int(rng.integers(tracks[i].size)), frontend.config.window_samples)
                b = _shifted(tracks[j], int(rng.integers(tracks[j].size)), frontend.config.window_samples)
                g = rng.uniform(0.3, 0.7)
                mixes.append(frontend.window(g * a / np.abs(a).max() + (1 - g) * b / np.abs(b).max()))
    synthetic = synthetic_sets(frontend, 0, 24).test
    return {"clips": clips, "mixes": np.stack(mixes), "synthetic": synthetic}


def time_rounds(runners: dict[str, callable], window: np.ndarray, rounds: int) -> dict[str, float]:
    for run in runners.values():
        run(window)
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            t0 = time.perf_counter()
            run(window)
            times[name].append(time.perf_counter() - t0)
    return {k: 1000 * float(np.median(v)) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="Fewer calibration windows for the table's extra variants.")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "inference.json")
    args = parser.parse_args()
    if not SEED.is_file():
        sys.exit(f"needs {SEED} (the seed checkpoint) and ../shared/audio; not present here")
    torch.set_num_threads(THREADS)
    model, labels = load_keras_bbnn(SEED)
    info = ModelInfo(labels=labels, model_id=SEED.stem)
    frontend = MelFrontend()
    sets = eval_sets(frontend)
    n_cal = 32 if args.quick else 96
    calibration = synthetic_sets(frontend, n_cal, 0).calibration

    fp32_path = bundled_model_path("fp32")
    int8_path = bundled_model_path("int8")
    shipped = json.loads(ort.InferenceSession(str(int8_path), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map["genre_stream"])
    shipped_cfg = shipped["provenance"]["quantization"]
    variants: dict[str, tuple[str, Int8Config | None]] = {
        "int8 plain (issue-7 baseline: QDQ, per-channel, min-max)": ("plain", Int8Config(recipe="plain")),
        "int8 fold+equalise, per-concat-input scales": ("noshare", Int8Config(shared_concat_scale=False)),
        "int8 fold+equalise+shared concat scale (all int8)": ("full", Int8Config()),
        "int8 ... + channel ranges at 99.99th percentile": ("pct", Int8Config(channel_percentile=99.99)),
        "int8 ... + block 3 and transition kept float": ("b3float", Int8Config(keep_float=("broadcast.2/", "transition"))),
    }
    sessions = {"ORT fp32": session(fp32_path, THREADS), "ORT int8 (shipped)": session(int8_path, THREADS)}
    for key, (_, cfg) in variants.items():
        print(f"quantising: {key}", file=sys.stderr, flush=True)
        sessions[key] = session(quantize_int8(model, info, calibration, cfg), THREADS)

    refs = {name: onnx_probabilities(sessions["ORT fp32"], w) for name, w in sets.items()}
    torch_parity = float(max(np.abs(torch_probabilities(model, w) - refs[name]).max() for name, w in sets.items()))
    rows = []
    bar = AccuracyBar()
    for name, sess in sessions.items():
        row: dict[str, object] = {"variant": name}
        for set_name, windows in sets.items():
            a = agreement(onnx_probabilities(sess, windows), refs[set_name])
            row[set_name] = {"windows": a.windows, "top1": a.top1, "mean_abs_dp": a.mean_abs, "max_abs_dp": a.max_abs, "meets_bar": a.meets(bar)}
        rows.append(row)

    runners = {"PyTorch eager fp32": lambda w: model(torch.from_numpy(w[None]))}
    for name, sess in sessions.items():
        runners[name] = lambda w, s=sess: s.run(None, {"mel": w[None]})
    with torch.no_grad():
        ms = time_rounds(runners, sets["clips"][0], args.rounds)
    for row in rows:
        row["ms_per_window"] = ms[row["variant"]]
        row["speedup_vs_ort_fp32"] = ms["ORT fp32"] / ms[row["variant"]]
        row["speedup_vs_eager"] = ms["PyTorch eager fp32"] / ms[row["variant"]]
    result = {
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": THREADS, "onnxruntime": ort.__version__, "torch": torch.__version__},
        "window": "1 x 647 frames x 128 mels (30 s), batch 1",
        "rounds": args.rounds,
        "pytorch_eager_ms": ms["PyTorch eager fp32"],
        "ort_fp32_vs_pytorch_max_abs_dp": torch_parity,
        "accuracy_bar": {"min_top1": bar.min_top1, "max_mean_abs_dp": bar.max_mean_abs, "max_abs_dp": bar.max_abs},
        "mean_abs_dp_definition": "mean over windows of the largest per-class |dp| of the window",
        "calibration": f"trainer.synth pieces, {n_cal} windows (table variants); shipped model: {shipped_cfg.get('calibration_source', '?')}",
        "shipped_int8_config": shipped_cfg,
        "variants": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'variant':58s} {'ms':>7s} {'x fp32':>7s} {'x eager':>7s}  clips top1/mean/max   mixes top1/mean/max   synth top1/mean/max")
    print(f"{'PyTorch eager fp32':58s} {ms['PyTorch eager fp32']:7.1f}")
    for row in rows:
        cells = "  ".join(f"{row[s]['top1']:.3f}/{row[s]['mean_abs_dp']:.3f}/{row[s]['max_abs_dp']:.3f}" for s in sets)
        print(f"{row['variant'][:58]:58s} {row['ms_per_window']:7.1f} {row['speedup_vs_ort_fp32']:7.2f} {row['speedup_vs_eager']:7.2f}  {cells}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
