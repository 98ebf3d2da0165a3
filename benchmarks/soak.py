"""Soak: one daemon with four sources, MQTT, history and a dashboard with live clients, for an hour.

    python benchmarks/soak.py [--minutes 60] [--out benchmarks/results/soak.json]

Sources: three recordings played in real time (``file:`` at recording speed, each as
long as the run) and a watched folder that receives a new file every minute. Outputs:
mosquitto on a free loopback port (started here), the tag history, and the dashboard
with four clients holding its live stream open. Every minute the daemon's RSS, CPU time
and open file descriptors are read from /proc; the report gives them per 10 minutes,
and the growth from the first to the last 10 minutes is the figure that must stay flat.
The audio is the bundled demo clip, so nothing outside the repository is needed.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import soundfile as sf
from machine import machine_info, process_cpu_seconds, process_rss_mb  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CLIENTS = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listens on port {port}")


def sample(pid: int) -> dict:
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return {"t": time.monotonic(), "rss_mb": process_rss_mb(pid), "cpu_s": process_cpu_seconds(pid), "fds": fds}


def hold_stream(port: int, stop: threading.Event) -> None:
    """A dashboard page's live stream: read it until told to stop, reconnecting if dropped."""
    while not stop.is_set():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/live", timeout=30) as resp:
                while not stop.is_set() and resp.readline():
                    pass
        except OSError:
            stop.wait(1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "soak.json")
    args = parser.parse_args()
    if not shutil.which("mosquitto"):
        sys.exit("soak: needs mosquitto (apt install mosquitto)")
    seconds = args.minutes * 60
    demo, sr = sf.read(REPO / "examples" / "demo.wav", dtype="float32")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        long = tmp / "long.wav"
        reps = int(np.ceil((seconds + 120) * sr / demo.size))
        with sf.SoundFile(long, "w", sr, 1, "PCM_16") as out:
            for k in range(reps):
                out.write(demo * (0.4 + 0.1 * (k % 5)))
        inbox = tmp / "inbox"
        inbox.mkdir()
        mqtt_port, http_port = free_port(), free_port()
        conf = tmp / "mosquitto.conf"
        conf.write_text(f"user {getpass.getuser()}\nlistener {mqtt_port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        broker = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cmd = [sys.executable, "-m", "genre_stream", "run", "--realtime", "--mqtt", f"mqtt://127.0.0.1:{mqtt_port}",
               "--state-dir", str(tmp / "state"), "--http", f"127.0.0.1:{http_port}", "--stats-interval", "30",
               *[arg for i in range(3) for arg in ("--source", f"air{i}=file:{long}")], "--source", f"inbox=watch:{inbox}"]
        log = open(tmp / "daemon.log", "wb")
        daemon = subprocess.Popen(cmd, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.DEVNULL, stderr=log)
        stop = threading.Event()
        clients: list[threading.Thread] = []
        samples: list[dict] = []
        try:
            wait_port(mqtt_port)
            wait_port(http_port)
            clients = [threading.Thread(target=hold_stream, args=(http_port, stop), daemon=True) for _ in range(CLIENTS)]
            for c in clients:
                c.start()
            start = time.monotonic()
            minute = 0
            while time.monotonic() - start < seconds:
                if daemon.poll() is not None:
                    raise RuntimeError(f"the daemon exited ({daemon.returncode}); see its log")
                shutil.copy(REPO / "examples" / "demo.wav", inbox / f"track-{minute:03d}.wav")
                samples.append(sample(daemon.pid))
                minute += 1
                time.sleep(max(0.0, start + minute * 60 - time.monotonic()))
            samples.append(sample(daemon.pid))
        finally:
            stop.set()
            daemon.terminate()
            try:
                daemon.wait(30)
            except subprocess.TimeoutExpired:
                daemon.kill()
            broker.terminate()
            broker.wait(10)
        tagged = sum(1 for p in (tmp / "inbox").iterdir()) if (tmp / "inbox").exists() else 0
    t0 = samples[0]["t"]
    per10: list[dict] = []
    for k in range(0, len(samples) - 1, 10):
        a, b = samples[k], samples[min(k + 10, len(samples) - 1)]
        per10.append({
            "minutes": [round((a["t"] - t0) / 60), round((b["t"] - t0) / 60)],
            "rss_mb_end": round(b["rss_mb"], 1),
            "cpu_percent_of_one_core": round(100 * (b["cpu_s"] - a["cpu_s"]) / (b["t"] - a["t"]), 2),
            "fds_end": b["fds"],
        })
    report = {
        "benchmark": "soak: 3 real-time file sources + 1 watched folder (a file a minute), MQTT, history, dashboard with 4 live clients",
        "machine": machine_info(),
        "minutes": args.minutes,
        "files_dropped_in_watch_folder": tagged,
        "per_10_minutes": per10,
        "rss_growth_first_to_last_mb": round(per10[-1]["rss_mb_end"] - per10[0]["rss_mb_end"], 1) if per10 else None,
        "fds_first_last": [per10[0]["fds_end"], per10[-1]["fds_end"]] if per10 else None,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
