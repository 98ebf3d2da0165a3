"""The lean runtime against the torch runtime it replaced, measured in one run.

    python benchmarks/runtime.py [--baseline REF] [--out benchmarks/results/runtime.json]

``--baseline`` (default: the last commit whose runtime imported torch) is checked out
in a temporary git worktree and run with the same interpreter, so both sides meet the
same machine load; medians of interleaved rounds. Needs the [train] extra in this venv
(the baseline imports torch). Measures, per side:

* ``classify`` of a short file (the 12 s demo): wall time including interpreter start;
* ``classify`` of a 10-minute 44.1 kHz stereo file: wall time, real-time factor, peak RSS;
* ``classify`` of a 3-hour file (new side only: the old one decoded it whole, >6 GB):
  peak RSS, which must not grow with the length;
* ``run --fast`` (the daemon, JSON lines and history) over a 5-minute file: peak RSS;
* the size of a runtime-only venv, when one exists at .venv-runtime (CI builds it).

Peak RSS is the child's own high-water mark (see peak_rss.py). The audio is made from
the bundled demo clip, so nothing outside the repository is needed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from peak_rss import run_measured  # noqa: E402

from genre_stream.audio.resample import resample  # noqa: E402
from machine import machine_info  # noqa: E402

DEFAULT_BASELINE = "4728b0c"  # main before the runtime dropped torch


def make_file(path: Path, minutes: float, rate: int = 44100) -> float:
    """A 16-bit stereo WAV of the demo clip varied in gain, written block by block."""
    demo, sr = sf.read(REPO / "examples" / "demo.wav", dtype="float32")
    demo = resample(demo, sr, rate)
    total = int(minutes * 60 * rate)
    with sf.SoundFile(path, "w", rate, 2, "PCM_16") as out:
        written, k = 0, 0
        while written < total:
            part = demo[: total - written] * (0.4 + 0.1 * (k % 5))
            out.write(np.stack([part, part * 0.9], axis=1))
            written += part.size
            k += 1
    return total / rate


def du_mb(path: Path) -> float | None:
    if not path.is_dir():
        return None
    out = subprocess.run(["du", "-sm", str(path)], capture_output=True, text=True).stdout
    return float(out.split()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default=DEFAULT_BASELINE)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "runtime.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = tmp / "baseline"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(base), args.baseline], check=True)
        try:
            sides = {"before": base, "after": REPO}
            demo = REPO / "examples" / "demo.wav"
            ten = tmp / "ten-minutes.wav"
            five = tmp / "five-minutes.wav"
            three_h = tmp / "three-hours.wav"
            seconds_ten = make_file(ten, 10)
            make_file(five, 5)
            seconds_3h = make_file(three_h, 180)
            results: dict[str, dict] = {name: {"startup": [], "ten": [], "daemon": []} for name in sides}
            for r in range(args.rounds):
                for name, repo in sides.items():
                    results[name]["startup"].append(run_measured(["classify", str(demo)], repo, cwd=tmp))
                    results[name]["ten"].append(run_measured(["classify", str(ten)], repo, cwd=tmp))
                    state = tmp / f"state-{name}-{r}"
                    results[name]["daemon"].append(run_measured(
                        ["run", "--fast", "--source", f"bench=file:{five}", "--jsonl", str(tmp / f"{name}.jsonl"),
                         "--state-dir", str(state)], repo, cwd=tmp))
                    print(f"round {r + 1}/{args.rounds} {name}: done", flush=True)
            long_run = run_measured(["classify", str(three_h)], REPO, cwd=tmp)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base)], check=False)

    def med(name: str, key: str, field: str) -> float:
        return statistics.median(x[field] for x in results[name][key])

    report: dict = {
        "machine": machine_info(),
        "baseline": args.baseline,
        "rounds": args.rounds,
        "data": "examples/demo.wav (12 s) varied in gain, as 44.1 kHz 16-bit stereo WAV files",
    }
    for name in ("before", "after"):
        report[name] = {
            "classify_short_wall_s": med(name, "startup", "wall_seconds"),
            "classify_short_peak_rss_mb": med(name, "startup", "peak_rss_mb"),
            "classify_10min_wall_s": med(name, "ten", "wall_seconds"),
            "classify_10min_x_realtime": round(seconds_ten / med(name, "ten", "wall_seconds"), 1),
            "classify_10min_peak_rss_mb": med(name, "ten", "peak_rss_mb"),
            "daemon_5min_fast_peak_rss_mb": med(name, "daemon", "peak_rss_mb"),
        }
    report["after"]["classify_3h_peak_rss_mb"] = long_run["peak_rss_mb"]
    report["after"]["classify_3h_x_realtime"] = round(seconds_3h / long_run["wall_seconds"], 1)
    b, a = report["before"], report["after"]
    report["ratios"] = {
        "classify_short_startup_speedup": round(b["classify_short_wall_s"] / a["classify_short_wall_s"], 2),
        "classify_10min_rss_ratio": round(a["classify_10min_peak_rss_mb"] / b["classify_10min_peak_rss_mb"], 3),
        "daemon_rss_ratio": round(a["daemon_5min_fast_peak_rss_mb"] / b["daemon_5min_fast_peak_rss_mb"], 3),
        "classify_3h_vs_10min_rss": round(a["classify_3h_peak_rss_mb"] / a["classify_10min_peak_rss_mb"], 3),
    }
    report["runtime_venv_mb"] = du_mb(REPO / ".venv-runtime")
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
