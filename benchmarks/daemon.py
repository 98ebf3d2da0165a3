"""Daemon benchmark -> benchmarks/results/daemon.json.

    PYTHONPATH=. python benchmarks/daemon.py [--cpu-seconds 120] [--latency-seconds 120] [--hours 1]

Four measurements on this machine, each with a baseline from the same run:

1. CPU per hour of live audio at hop 5 s: a `genre-stream run` process plays music in real
   time (file source, --realtime) to a local broker; CPU time of the daemon (and, separately,
   of its ffmpeg decoder, which a mic source would not have) over a steady stretch after
   start-up. Baseline: the same daemon on digital silence (no inference).
2. End-to-end latency: the daemon in-process, a real file source in real time, MQTT to a local
   broker and a subscriber. Latency = time the subscriber receives a state minus the capture
   time (``AudioChunk.captured_at``) of the chunk whose arrival completed that window.
   Baseline: a bare publish -> receive round trip through the same broker.
3. Steady RSS of the real-time daemon process (sampled every 5 s), against its RSS right after start-up.
4. A one-hour file source as fast as possible: RSS of the daemon process sampled at every
   minute of audio (read from its JSON lines as they are written): flat means no growth.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from brokers import Broker, Subscriber, available  # noqa: E402
from machine import machine_info, process_cpu_seconds, process_rss_mb  # noqa: E402

SR = 22050


def music_clip() -> np.ndarray:
    """Real music when the workspace's shared clips are there, else the bundled demo."""
    shared = REPO.parent / "shared" / "audio" / "gtzan-country.00000.wav"
    path = shared if shared.is_file() else REPO / "examples" / "demo.wav"
    from genre_stream.audio.decode import load_audio

    return load_audio(path, SR)


def write_wav(path: Path, audio: np.ndarray, seconds: float) -> Path:
    reps = int(np.ceil(seconds * SR / audio.size))
    with sf.SoundFile(path, "w", SR, 1, subtype="PCM_16") as f:
        for _ in range(reps):  # written in pieces: an hour of audio never sits in memory
            f.write(audio)
    return path


def children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return out


def daemon_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "genre_stream", "run", *args]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO)
    e["GENRE_STREAM_CONFIG"] = ""
    return e


def cpu_run(clip: Path, broker: Broker, state: Path, seconds: float, warmup: float) -> dict:
    """CPU and RSS of a real-time daemon; the window starts after warm-up (model load, first fill)."""
    proc = subprocess.Popen(
        daemon_cmd("--source", f"bench=file:{clip}", "--realtime", "--mqtt", broker.url, "--state-dir", str(state), "--stats-interval", "60"),
        env=env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=open(state.parent / f"{state.name}.log", "w"),
    )
    try:
        time.sleep(warmup)
        rss_start = process_rss_mb(proc.pid)
        kids = children(proc.pid)
        c0, k0, t0 = process_cpu_seconds(proc.pid), sum(process_cpu_seconds(k) for k in kids), time.monotonic()
        rss = []
        while time.monotonic() - t0 < seconds:
            time.sleep(5)
            rss.append(process_rss_mb(proc.pid))
        c1, k1, t1 = process_cpu_seconds(proc.pid), sum(process_cpu_seconds(k) for k in kids), time.monotonic()
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            print((state.parent / f"{state.name}.log").read_text()[-3000:], file=sys.stderr)
            raise
    wall = t1 - t0
    return {
        "measured_seconds": round(wall, 1),
        "daemon_core_fraction": (c1 - c0) / wall,
        "decoder_core_fraction": (k1 - k0) / wall,
        "daemon_cpu_seconds_per_audio_hour": (c1 - c0) / wall * 3600,
        "rss_after_warmup_mb": round(rss_start, 1),
        "rss_samples_mb": [round(r, 1) for r in rss],
    }


class ProbeSink:
    """Records, for each state the daemon publishes, the capture time of the chunk that completed it."""

    def __init__(self, current: dict[str, float]) -> None:
        self.current = current
        self.captured: dict[tuple[str, float], float] = {}
        self.published: dict[tuple[str, float], float] = {}  # when the daemon handed the state to its sinks

    def start(self) -> None: ...

    def publish(self, message) -> None:
        from genre_stream.sinks.messages import GenreState

        if isinstance(message, GenreState):
            key = (message.source, round(message.window_end, 3))
            self.captured[key] = self.current[message.source]
            self.published[key] = time.monotonic()

    def sources_changed(self, sources, model) -> None: ...

    def close(self, timeout: float) -> bool:
        return True

    def stats(self) -> dict:
        return {}


def latency_run(clip: Path, broker: Broker, state: Path, seconds: float, hop: float) -> dict:
    from genre_stream.config import load_config
    from genre_stream.app.daemon import Daemon
    from genre_stream.sources import source_from_config
    from genre_stream.model.choice import open_engine
    from genre_stream.sinks import Fanout
    from genre_stream.sinks.mqtt import MqttSink
    from genre_stream.sources import Source

    config = load_config(None, {
        "sources": [f"lat=file:{clip}"], "realtime": True, "state_dir": str(state), "mqtt.url": broker.url,
        "pipeline.hop_seconds": hop, "stats_interval": 0, "homeassistant.enabled": False,
    }, environ={})
    current: dict[str, float] = {}

    class Timed(Source):
        """The real file source, with the capture time of the chunk being handled noted down."""

        def __init__(self, inner: Source) -> None:
            self.inner, self.id, self.finite = inner, inner.id, inner.finite

        def run(self, emit, stop) -> None:
            def timed(item):
                current[self.id] = getattr(item, "captured_at", 0.0)
                emit(item)

            self.inner.run(timed, stop)

    received: dict[tuple[str, float], float] = {}
    sub = Subscriber(broker.port, ["genre-stream/+/state"])
    sub.client.on_message = lambda c, u, m: received.setdefault(
        (json.loads(m.payload)["source"], round(json.loads(m.payload)["window_end"], 3)), time.monotonic())
    probe = ProbeSink(current)
    # The probe goes first: it marks the moment the daemon hands a state to its sinks.
    sinks = Fanout([probe, MqttSink(config.mqtt, config.homeassistant, config.state_dir)])
    daemon = Daemon(config, engine=open_engine(threads=1), sinks=sinks, source_factory=lambda spec, cfg: Timed(source_from_config(spec, cfg)))
    timer = threading.Timer(seconds, daemon.request_stop)
    timer.start()
    daemon.run()
    timer.cancel()
    time.sleep(0.5)
    sub.close()
    lat = [received[k] - probe.captured[k] for k in probe.captured if k in received]
    lat_ms = np.array(lat) * 1000
    processing_ms = np.array([probe.published[k] - probe.captured[k] for k in probe.captured if k in received]) * 1000
    delivery_ms = np.array([received[k] - probe.published[k] for k in probe.captured if k in received]) * 1000

    # Baseline: publish -> receive through the same broker, no daemon.
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    rtt: list[float] = []
    sent: dict[bytes, float] = {}
    base = Subscriber(broker.port, ["bench/rtt"])
    base.client.on_message = lambda c, u, m: rtt.append(time.monotonic() - sent[bytes(m.payload)])
    pub = mqtt.Client(CallbackAPIVersion.VERSION2)
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    for i in range(200):
        key = str(i).encode()
        sent[key] = time.monotonic()
        pub.publish("bench/rtt", key, qos=1)
        time.sleep(0.01)
    time.sleep(1)
    pub.loop_stop()
    base.close()
    rtt_ms = np.array(rtt) * 1000
    return {
        "hop_seconds": hop,
        "windows": int(lat_ms.size),
        "p50_ms": round(float(np.percentile(lat_ms, 50)), 1),
        "p99_ms": round(float(np.percentile(lat_ms, 99)), 1),
        "max_ms": round(float(lat_ms.max()), 1),
        "processing_p50_ms": round(float(np.percentile(processing_ms, 50)), 1),
        "processing_p99_ms": round(float(np.percentile(processing_ms, 99)), 1),
        "delivery_p50_ms": round(float(np.percentile(delivery_ms, 50)), 1),
        "delivery_p99_ms": round(float(np.percentile(delivery_ms, 99)), 1),
        "baseline_broker_roundtrip_p50_ms": round(float(np.percentile(rtt_ms, 50)), 2),
        "baseline_broker_roundtrip_p99_ms": round(float(np.percentile(rtt_ms, 99)), 2),
    }


def hour_run(clip: Path, state: Path) -> dict:
    """An hour of audio as fast as possible; RSS read at every minute of audio from the JSON lines."""
    proc = subprocess.Popen(
        daemon_cmd("--source", f"hour=file:{clip}", "--fast", "--state-dir", str(state), "--stats-interval", "0"),
        env=env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    t0 = time.monotonic()
    samples: list[tuple[float, float]] = []
    next_minute = 60.0
    states = 0
    assert proc.stdout is not None
    for line in proc.stdout:
        msg = json.loads(line)
        if "state" in msg:
            states += 1
            if msg["window_end"] >= next_minute:
                samples.append((msg["window_end"] / 60, process_rss_mb(proc.pid)))
                next_minute += 60
    code = proc.wait()
    wall = time.monotonic() - t0
    rss = np.array([r for _, r in samples])
    minutes = np.array([m for m, _ in samples])
    steady = minutes >= 5  # after the allocator settles
    slope = float(np.polyfit(minutes[steady], rss[steady], 1)[0]) * 60 if steady.sum() > 2 else float("nan")
    return {
        "exit_code": code,
        "audio_seconds": round(sf.info(clip).duration, 1),
        "wall_seconds": round(wall, 1),
        "speed_x_realtime": round(sf.info(clip).duration / wall, 1),
        "states": states,
        "rss_per_audio_minute_mb": [round(r, 1) for r in rss],
        "rss_first_mb": round(float(rss[0]), 1),
        "rss_last_mb": round(float(rss[-1]), 1),
        "rss_growth_mb_per_audio_hour_after_5_min": round(slope, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cpu-seconds", type=float, default=120)
    parser.add_argument("--warmup", type=float, default=25)
    parser.add_argument("--latency-seconds", type=float, default=120)
    parser.add_argument("--latency-hop", type=float, default=1.0)
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "daemon.json")
    args = parser.parse_args()
    kind = next(k for k in ("mosquitto", "amqtt") if available(k))
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="gs-bench-"))
    try:
        music = music_clip()
        long_music = write_wav(work / "music.wav", music, args.warmup + args.cpu_seconds + 30)
        silence = write_wav(work / "silence.wav", np.zeros(SR * 10, np.float32), args.warmup + args.cpu_seconds + 30)
        broker = Broker(kind, work).start()
        try:
            cpu_music = cpu_run(long_music, broker, work / "s1", args.cpu_seconds, args.warmup)
            cpu_silence = cpu_run(silence, broker, work / "s2", args.cpu_seconds, args.warmup)
            lat_clip = write_wav(work / "lat.wav", music, args.latency_seconds + 30)
            latency = latency_run(lat_clip, broker, work / "s3", args.latency_seconds, args.latency_hop)
        finally:
            broker.stop()
        hour_clip = write_wav(work / "hour.wav", music, args.hours * 3600)
        hour = hour_run(hour_clip, work / "s4")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    frac = cpu_music["daemon_core_fraction"]
    result = {
        "machine": {
            **machine_info(broker=kind),
            # other people's jobs share these 2 cores: latency (wall time) suffers first, CPU time less
            "load_average_1_5_15_before": [round(x, 2) for x in load_before],
            "load_average_1_5_15_after": [round(x, 2) for x in os.getloadavg()],
        },
        "cpu_live_hop5": {
            "music": cpu_music,
            "baseline_silence": cpu_silence,
            "percent_of_one_core": round(frac * 100, 2),
            "percent_of_one_core_with_decoder": round((frac + cpu_music["decoder_core_fraction"]) * 100, 2),
            "ratio_music_to_silence": round(frac / cpu_silence["daemon_core_fraction"], 2) if cpu_silence["daemon_core_fraction"] else None,
            "target_percent": 5.0,
        },
        "latency": {**latency, "target_p99_ms": 300},
        "rss_steady_mb": {
            "after_warmup": cpu_music["rss_after_warmup_mb"],
            "median": round(statistics.median(cpu_music["rss_samples_mb"]), 1),
            "max": max(cpu_music["rss_samples_mb"]),
            "ratio_max_to_after_warmup": round(max(cpu_music["rss_samples_mb"]) / cpu_music["rss_after_warmup_mb"], 3),
        },
        "one_hour_file_fast": hour,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "one_hour_file_fast"}, indent=2))
    print(json.dumps({k: v for k, v in hour.items() if k != "rss_per_audio_minute_mb"}, indent=2))


if __name__ == "__main__":
    main()
