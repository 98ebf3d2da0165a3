"""Daemon CPU with the dashboard open and streaming vs closed, in the same run.

Three daemons play the same recording in real time (hop 5 s) side by side, so the
shared 2-core machine's background load hits all of them alike:

* ``off``   -- no ``--http`` (the default);
* ``idle``  -- ``--http`` on, nobody looking;
* ``open``  -- ``--http`` on with a page's traffic: the history request a page makes
  when it loads, then the live event stream (states, events and the mel spectrogram
  every second) read continuously, as an open browser tab does.

Only the daemon processes' own CPU time (utime + stime from /proc) is counted, over
the same wall-clock window after the model has loaded and the buffer has filled.
Target: ``open`` costs less than 1 percentage point of one core more than ``off``.

    PYTHONPATH=. python benchmarks/dashboard.py [--seconds 90] [--rounds 2]

writes benchmarks/results/dashboard.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from machine import machine_info, process_cpu_seconds  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CLIP = REPO.parent / "shared" / "audio" / "gtzan-country.00000.wav"
RESULTS = REPO / "benchmarks" / "results" / "dashboard.json"
MODES = ("off", "idle", "open")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_recording(path: Path, seconds: float) -> None:
    """The shared country clip looped to length; a synthetic band-limited signal where it is absent."""
    sr = 22050
    if CLIP.is_file():
        clip, sr = sf.read(CLIP, dtype="float32")
    else:
        rng = np.random.default_rng(0)
        t = np.arange(sr * 10) / sr
        clip = (0.2 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    reps = int(np.ceil(seconds * sr / len(clip)))
    sf.write(path, np.tile(clip, reps)[: int(seconds * sr)], sr)


@dataclass
class Page:
    """The network side of an open dashboard tab."""

    base: str
    bytes: int = 0
    events: dict[str, int] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        host, port = self.base.split("//", 1)[1].rsplit(":", 1)
        for path in ("/", "/static/app.js", "/static/style.css", "/api/history?kind=segments&since=-1h"):
            with urllib.request.urlopen(self.base + path, timeout=10) as r:
                self.bytes += len(r.read())
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(f"GET /api/live HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            sock.settimeout(1.0)
            buffer = b""
            while not self.stop.is_set():
                try:
                    data = sock.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    break
                self.bytes += len(data)
                buffer += data
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.startswith(b"event: "):
                        kind = line[7:].decode()
                        self.events[kind] = self.events.get(kind, 0) + 1


def wait_http(base: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"dashboard at {base} did not come up in {timeout} s")


def one_round(recording: Path, seconds: float, warmup: float, hop: float, workdir: Path) -> dict:
    workdir.mkdir(parents=True)
    procs: dict[str, subprocess.Popen] = {}
    bases: dict[str, str] = {}
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    for mode in MODES:
        state = workdir / mode
        cmd = [sys.executable, "-m", "genre_stream", "run", "--source", f"file:{recording}", "--realtime",
               "--hop", str(hop), "--threads", "1", "--stats-interval", "0", "--state-dir", str(state),
               "--jsonl", str(workdir / f"{mode}.jsonl")]
        if mode != "off":
            port = free_port()
            bases[mode] = f"http://127.0.0.1:{port}"
            cmd += ["--http", f"127.0.0.1:{port}"]
        procs[mode] = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                                       stderr=open(workdir / f"{mode}.log", "w"))
    try:
        for base in bases.values():
            wait_http(base, 60)
        page = Page(bases["open"])
        reader = threading.Thread(target=page.run, daemon=True)
        reader.start()
        time.sleep(warmup)  # model loaded, first windows classified, page connected
        start = {m: process_cpu_seconds(p.pid) for m, p in procs.items()}
        t0 = time.monotonic()
        time.sleep(seconds)
        wall = time.monotonic() - t0
        used = {m: process_cpu_seconds(p.pid) - start[m] for m, p in procs.items()}
        page.stop.set()
        reader.join(5)
        for m, p in procs.items():
            if p.poll() is not None:
                raise RuntimeError(f"daemon {m} exited early ({p.returncode}); see {workdir / (m + '.log')}")
    finally:
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            p.wait(15)
    return {
        "wall_s": round(wall, 2),
        "cpu_percent_of_one_core": {m: round(100 * used[m] / wall, 3) for m in MODES},
        "page_bytes_received": page.bytes,
        "page_events_received": page.events,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=90.0, help="measured window per round")
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds before measuring (model load, buffer fill)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--hop", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    rounds = []
    with tempfile.TemporaryDirectory(prefix="gs-bench-dashboard-") as tmp:
        workdir = Path(tmp)
        recording = workdir / "recording.wav"
        make_recording(recording, args.warmup + args.seconds + 30)
        for i in range(args.rounds):
            rounds.append(one_round(recording, args.seconds, args.warmup, args.hop, workdir / f"round{i}"))
            print(f"round {i + 1}: {rounds[-1]['cpu_percent_of_one_core']}", file=sys.stderr)

    mean = {m: round(float(np.mean([r["cpu_percent_of_one_core"][m] for r in rounds])), 3) for m in MODES}
    result = {
        "benchmark": "dashboard CPU overhead",
        "machine": machine_info(),
        "recording": "gtzan-country.00000.wav looped" if CLIP.is_file() else "synthetic tone + noise",
        "hop_seconds": args.hop,
        "measured_seconds_per_round": args.seconds,
        "rounds": rounds,
        "mean_cpu_percent_of_one_core": mean,
        "open_minus_off_pp": round(mean["open"] - mean["off"], 3),
        "idle_minus_off_pp": round(mean["idle"] - mean["off"], 3),
        "target_pp": 1.0,
        "meets_target": mean["open"] - mean["off"] < 1.0,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
