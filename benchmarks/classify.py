"""End-to-end `classify` throughput and memory, against the naive path, in one run.

    python benchmarks/classify.py [--minutes 10] [--out benchmarks/results/classify.json]

* ours: decode in blocks, mel frames streamed once (MelFrontend), 30 s windows every
  10 s sliced from it, batched ONNX inference with the bundled default model.
* naive baseline: librosa.load, librosa's melspectrogram computed from scratch for
  every window, PyTorch eager BBNN one window at a time.
* the real CLI as a child process: wall time including interpreter start and peak
  RSS (the child's own high-water mark, see peak_rss.py; ru_maxrss of a child would
  include the pages it inherited from this process).

The audio is the bundled demo clip varied in gain and pitch and concatenated to the
requested length, so the benchmark needs nothing outside the repository.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from peak_rss import run_measured  # noqa: E402

from genre_stream.model.choice import open_engine
from genre_stream.tracks.analysis import analyse_file  # noqa: E402
from machine import machine_info  # noqa: E402


def make_long_file(path: Path, minutes: float) -> float:
    import librosa

    demo, sr = sf.read(REPO / "examples" / "demo.wav", dtype="float32")
    parts, total, k = [], 0, 0
    while total < minutes * 60 * sr:
        part = librosa.effects.pitch_shift(demo, sr=sr, n_steps=(k % 5) - 2) * (0.5 + 0.1 * (k % 5))
        parts.append(part.astype(np.float32))
        total += part.size
        k += 1
    audio = np.concatenate(parts)[: int(minutes * 60 * sr)]
    sf.write(path, audio, sr, subtype="PCM_16")
    return audio.size / sr


def naive_classify(path: Path, hop_s: float = 10.0) -> np.ndarray:
    import librosa
    import torch

    from trainer.model import BBNN

    seed = REPO.parent / "shared" / "seed" / "checkpoints" / "bbnn-gtzan-augmented-fold0.hdf5"
    if seed.exists():
        from trainer.keras_import import load_keras_bbnn

        model, _ = load_keras_bbnn(seed)
    else:  # same architecture, same cost; the weights do not matter for timing
        model = BBNN().eval()
    y, sr = librosa.load(path, sr=22050, mono=True)
    win = 646 * 1024
    probs = []
    with torch.no_grad():
        for start in range(0, max(1, y.size - win + 1), int(hop_s * sr)):
            seg = y[start : start + win]
            mel = librosa.feature.melspectrogram(y=seg, sr=sr, n_fft=2048, hop_length=1024, n_mels=128, fmax=11025, pad_mode="reflect")
            db = librosa.power_to_db(mel, ref=np.max, top_db=80)
            x = (db / db.min()).T[None, :647].astype(np.float32)
            logits, _ = model(torch.from_numpy(x))
            probs.append(torch.softmax(logits, -1).numpy()[0])
    return np.mean(probs, axis=0)


def run_cli(path: Path) -> tuple[float, float]:
    """Wall time and peak RSS (MB) of the real CLI process, interpreter start included."""
    result = run_measured(["classify", "--json", str(path)], REPO)
    return result["wall_seconds"], result["peak_rss_mb"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "classify.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "long.wav"
        seconds = make_long_file(path, args.minutes)
        engine = open_engine()

        analyse_file(path, engine)  # warm-up: page cache, ORT arena
        t0 = time.perf_counter()
        ours = analyse_file(path, engine)
        ours_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        naive = naive_classify(path)
        naive_s = time.perf_counter() - t0

        cli_wall, cli_rss = run_cli(path)

    result = {
        "benchmark": "classify end to end (decode + mel + inference), 30 s windows, hop 10 s",
        "machine": machine_info(),
        "model": engine.model_id,
        "model_file": engine.path.name,
        "audio_seconds": round(seconds, 1),
        "windows": len(ours.windows),
        "ours": {"wall_s": round(ours_s, 3), "audio_s_per_wall_s": round(seconds / ours_s, 1)},
        "naive_baseline": {"wall_s": round(naive_s, 3), "audio_s_per_wall_s": round(seconds / naive_s, 1)},
        "speedup_vs_naive": round(naive_s / ours_s, 2),
        "cli_process": {"wall_s_including_startup": round(cli_wall, 3), "audio_s_per_wall_s": round(seconds / cli_wall, 1), "peak_rss_mb": round(cli_rss, 1)},
        "same_genre_as_naive": ours.labels[int(np.argmax(ours.probabilities))] == ours.labels[int(np.argmax(naive))],
        "target": "ours >= 200x real time",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
