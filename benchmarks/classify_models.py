"""`genre-stream classify` throughput with the default model (``--model auto``) against fp32 and int8, in one run.

    python benchmarks/classify_models.py [--minutes 10] [--rounds 3] [--out benchmarks/results/classify_models.json]

Each measurement is the real CLI in a fresh interpreter (``peak_rss.run_measured``:
wall time including start-up, and the process's own peak RSS) classifying the same
10-minute 44.1 kHz stereo file (the demo clip varied in gain, as in runtime.py).
``auto`` gets a cache directory of its own, filled by one untimed run first, so the
timed runs reuse auto's choice as every run after the first does; the log line of
that first run (which export auto picked, and why) is stored. The three models
are interleaved round by round; medians are reported, with audio seconds per wall
second (the issue-10 target is >= 200x real time).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import machine_info  # noqa: E402
from peak_rss import run_measured  # noqa: E402
from runtime import make_file  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "classify_models.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        audio = tmp / "long.wav"
        seconds = make_file(audio, args.minutes)
        os.environ["XDG_CACHE_HOME"] = str(tmp / "cache")  # auto's choice is cached here, not in the user's cache
        first = subprocess.run([sys.executable, "-m", "genre_stream", "-v", "classify", "--json", str(audio)], capture_output=True, text=True,
                               env=dict(os.environ, PYTHONPATH=str(REPO)), cwd=tmp, check=True)
        log_line = next((line for line in first.stderr.splitlines() if "model auto ->" in line), None)
        picked = json.loads(first.stdout)
        runs: dict[str, list[dict]] = {"auto": [], "fp32": [], "int8": []}
        for r in range(args.rounds):
            for name in runs:
                model = [] if name == "auto" else ["--model", name]
                runs[name].append(run_measured(["classify", "--json", *model, str(audio)], REPO, cwd=tmp))
            print(f"round {r + 1}/{args.rounds}: " + "  ".join(f"{n} {v[-1]['wall_seconds']:.1f} s" for n, v in runs.items()), flush=True)

    report = {
        "benchmark": "genre-stream classify --json on one file, fresh process per run (start-up included), models interleaved",
        "machine": machine_info(),
        "audio_seconds": round(seconds, 1),
        "rounds": args.rounds,
        "auto_log": log_line,
        "auto_model": {k: picked.get(k) for k in ("model", "precision")},
        "models": {
            name: {"wall_s_median": round(statistics.median(x["wall_seconds"] for x in v), 2),
                   "x_realtime": round(seconds / statistics.median(x["wall_seconds"] for x in v), 1),
                   "peak_rss_mb_median": round(statistics.median(x["peak_rss_mb"] for x in v), 1),
                   "wall_s_per_round": [round(x["wall_seconds"], 2) for x in v]}
            for name, v in runs.items()
        },
        "target": "issue 10: classify >= 200x real time with the default model",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
