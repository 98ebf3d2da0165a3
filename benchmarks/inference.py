"""Per-window inference speed of the bundled exports: ORT fp32 vs int8, one session per process.

Writes ``benchmarks/results/inference.json``. Why one process per variant: the
previous version of this benchmark kept seven two-thread sessions in one
process, so the worker threads one session left behind were still busy when the
next session ran, and the measured fp32/int8 gap shrank (issue 15). Here every
measurement is a fresh interpreter holding exactly ONE onnxruntime session built
with the product's own settings (``genre_stream.model.session.session_options``); it
warms up, times ``--calls`` calls of one 30 s window and reports their median.
The parent interleaves the variants round by round (fp32, int8, fp32, int8, ...)
at each thread count, so load drifts hit every variant alike, and reports the
median over rounds and the fp32/variant ratio measured in the same run.

    PYTHONPATH=. python benchmarks/inference.py [--rounds 5] [--calls 15] [--threads 1 2]
        [--model NAME=PATH ...]    # extra candidates (e.g. a rebuilt int8) beside fp32 and int8

No data is needed: the window is a fixed random normalised mel window (speed does
not depend on the values for these graphs). Agreement with fp32 on real music is
``benchmarks/int8_agreement.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from machine import machine_info  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

_CHILD = """
import json, sys, time
import numpy as np
import onnxruntime as ort
from genre_stream.model.session import session_options
path, threads, calls = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sess = ort.InferenceSession(path, sess_options=session_options(threads), providers=["CPUExecutionProvider"])
inp = sess.get_inputs()[0]
window = np.random.default_rng(0).standard_normal((1, 647, 128)).astype(np.float32)
for _ in range(3):
    sess.run(None, {inp.name: window})
times = []
for _ in range(calls):
    t0 = time.perf_counter()
    sess.run(None, {inp.name: window})
    times.append(time.perf_counter() - t0)
print(json.dumps({"ms": 1000 * float(np.median(times))}))
"""


def time_in_child(path: Path, threads: int, calls: int, python: str = sys.executable) -> float:
    """Median ms per window of ``calls`` runs in a fresh process holding one session."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run([python, "-c", _CHILD, str(path), str(threads), str(calls)], capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"timing {path} failed: {proc.stderr[-2000:]}")
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["ms"])


def main() -> None:
    sys.path.insert(0, str(REPO))
    import onnxruntime as ort

    from genre_stream.model.bundled import bundled_model_path

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; each round runs every variant once per thread count")
    parser.add_argument("--calls", type=int, default=15, help="timed calls per child process (median taken)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--model", action="append", default=[], metavar="NAME=PATH", help="extra variant to time")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "inference.json")
    args = parser.parse_args()

    variants = {"fp32": bundled_model_path("fp32"), "int8": bundled_model_path("int8")}
    for spec in args.model:
        name, _, path = spec.partition("=")
        variants[name] = Path(path)
    samples: dict[int, dict[str, list[float]]] = {t: {v: [] for v in variants} for t in args.threads}
    started = time.perf_counter()
    for r in range(args.rounds):
        for threads in args.threads:
            for name, path in variants.items():
                samples[threads][name].append(time_in_child(path, threads, args.calls))
        print(f"round {r + 1}/{args.rounds}: " + "  ".join(
            f"{t}t " + " ".join(f"{n}={s[-1]:.1f}" for n, s in samples[t].items()) for t in args.threads), file=sys.stderr, flush=True)

    by_threads = {}
    for threads, per in samples.items():
        fp32 = statistics.median(per["fp32"])
        by_threads[str(threads)] = {
            name: {"ms_per_window_median": round(statistics.median(v), 2), "ms_per_round": [round(x, 2) for x in v],
                   "speedup_vs_fp32": round(fp32 / statistics.median(v), 3)}
            for name, v in per.items()
        }
    result = {
        "method": "one ORT session per child process (genre_stream.model.session.session_options), variants interleaved round by "
                  "round; per child: 3 warm-up calls then the median of --calls calls; reported: median over rounds",
        "machine": machine_info(onnxruntime=ort.__version__),
        "window": "1 x 647 frames x 128 mels (30 s), batch 1",
        "rounds": args.rounds,
        "calls_per_child": args.calls,
        "models": {name: str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path) for name, path in variants.items()},
        "threads": by_threads,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for threads, per in by_threads.items():
        for name, row in per.items():
            print(f"{threads} thread(s)  {name:12s} {row['ms_per_window_median']:7.1f} ms  {row['speedup_vs_fp32']:.2f}x vs fp32")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
