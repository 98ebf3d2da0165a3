"""Hostile soak (issue 24): the daemon for >= 30 minutes under everything the probe threw at it at once.

    python benchmarks/soak_hostile.py [--minutes 30] [--clients 1000] [--out benchmarks/results/soak_hostile.json]

The daemon runs under ``prlimit --nofile=1024:1024`` (systemd's default soft limit) with:

* a live source (a long recording played in real time) and a watched folder that receives, every
  minute, a hostile mix: a good track, a corrupt file, a WAV whose header says 1 Hz, a float WAV with
  NaN/Inf and one 1e30 sample, an MP3 whose Xing header lies about its length, a non-UTF-8 name;
* mosquitto (persistent, on a free loopback port) stopped for 10 s every 3 minutes;
* a birth-message flood: 5,000 ``online`` on ``homeassistant/status`` every 5 minutes;
* ``--clients`` dashboard clients holding the live stream open (more than the fd limit leaves room for).

A subscriber with a persistent session counts every state and event the broker delivers; the tag
history (every state the daemon made) is the reference. The report: states lost (in the history, never
delivered), duplicate deliveries, watched files with other than exactly one outcome, RSS and fds per
10 minutes, dashboard answers (200 / 503 / failed), and the SIGTERM stop time at the end.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import soundfile as sf
from machine import machine_info, process_cpu_seconds, process_rss_mb  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion
from soak import free_port, wait_port  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SR = 22050


def plain(name: str) -> str:
    """A file name compared across forms: undecodable bytes (a surrogate here, \\xff in JSON) as '?'."""
    return re.sub(r"\\x[0-9a-fA-F]{2}|[^\x20-\x7e]", "?", name)


def hostile_batch(folder: Path, work: Path, k: int, demo: np.ndarray) -> list[str]:
    """Write one minute's mix into ``folder`` (each written aside, then moved in); the names written."""
    names = []

    def put(name: str | bytes, write) -> None:
        tmp = work / f"tmp-{k}"
        write(tmp)
        target = os.path.join(os.fsencode(folder), name if isinstance(name, bytes) else os.fsencode(name))
        os.replace(tmp, target)
        names.append(os.fsdecode(name) if isinstance(name, bytes) else name)

    put(f"good-{k:03d}.wav", lambda p: sf.write(p, demo, SR, format="WAV"))
    put(f"corrupt-{k:03d}.wav", lambda p: p.write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt garbage" * 10))
    put(f"one-hertz-{k:03d}.wav", lambda p: sf.write(p, np.zeros(20000, np.int16), 1, subtype="PCM_16", format="WAV"))

    def nasty_float(p: Path) -> None:
        x = np.tile(demo, 5)[: 60 * SR].astype(np.float32)
        x[1000] = np.inf
        x[5 * SR : 7 * SR] = np.nan
        x[30 * SR] = 1e30
        sf.write(p, x, SR, subtype="FLOAT", format="WAV")

    put(f"nan-inf-{k:03d}.wav", nasty_float)

    def lying_mp3(p: Path) -> None:
        wav = work / f"src-{k}.wav"
        sf.write(wav, np.tile(demo, 4), SR)
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(wav), "-write_xing", "1", "-f", "mp3", str(p)], check=True)
        data = bytearray(p.read_bytes())
        at = data.find(b"Xing")
        if at >= 0 and data[at + 7] & 1:  # frames field present: claim a quarter
            frames = int.from_bytes(data[at + 8 : at + 12], "big")
            data[at + 8 : at + 12] = (frames // 4).to_bytes(4, "big")
        p.write_bytes(bytes(data))

    put(f"lying-xing-{k:03d}.mp3", lying_mp3)
    put(b"non-utf8-\xff-%03d.wav" % k, lambda p: sf.write(p, demo, SR, format="WAV"))
    return names


class Counter:
    """A persistent-session subscriber: every state and event the broker delivers, with duplicates kept."""

    def __init__(self, port: int) -> None:
        self.states: list[dict] = []
        self.events: list[dict] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="soak-counter", clean_session=False)
        self.client.on_connect = lambda c, u, f, rc, p=None: c.subscribe([("genre-stream/+/state", 1), ("genre-stream/+/event", 1)])
        self.client.on_message = self._message
        self.client.reconnect_delay_set(1, 2)
        self.client.connect_async("127.0.0.1", port)
        self.client.loop_start()

    def _message(self, client, userdata, msg) -> None:
        try:
            data = json.loads(msg.payload)
        except ValueError:
            return
        with self.lock:
            (self.states if msg.topic.endswith("/state") else self.events).append(data)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def flood(port: int, n: int) -> None:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="soak-flood")
    c.connect("127.0.0.1", port)
    c.loop_start()
    for _ in range(n):
        c.publish("homeassistant/status", "online", qos=0)
    time.sleep(1.0)
    c.loop_stop()
    c.disconnect()


def dashboard_clients(port: int, n: int, stop: threading.Event, answers: dict[str, int]) -> list[socket.socket]:
    """Open ``n`` live-stream requests and keep them; count the status lines that come back."""
    socks = []
    for _ in range(n):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(f"GET /api/live HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
            s.settimeout(5)
            head = s.recv(64)
            key = "200" if b" 200 " in head else "503" if b" 503 " in head else "other"
            answers[key] = answers.get(key, 0) + 1
            if key == "200":
                socks.append(s)
            else:
                s.close()
        except OSError:
            answers["failed"] = answers.get("failed", 0) + 1
    return socks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "soak_hostile.json")
    args = parser.parse_args()
    for tool in ("mosquitto", "ffmpeg", "prlimit"):
        if not shutil.which(tool):
            sys.exit(f"soak_hostile: needs {tool}")
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))  # this process holds the clients
    seconds = args.minutes * 60
    demo, sr = sf.read(REPO / "examples" / "demo.wav", dtype="float32")
    assert sr == SR
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        live = tmp / "live.wav"
        with sf.SoundFile(live, "w", SR, 1, "PCM_16") as out:
            for k in range(int(np.ceil((seconds + 180) * SR / demo.size))):
                out.write(demo * (0.4 + 0.1 * (k % 5)))
        inbox, work = tmp / "inbox", tmp / "work"
        inbox.mkdir()
        work.mkdir()
        mqtt_port, http_port = free_port(), free_port()
        conf = tmp / "mosquitto.conf"
        conf.write_text(f"user {getpass.getuser()}\nlistener {mqtt_port} 127.0.0.1\nallow_anonymous true\n"
                        f"persistence true\npersistence_location {tmp}/\nmax_queued_messages 100000\n")

        def start_broker() -> subprocess.Popen:
            p = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_port(mqtt_port)
            return p

        broker = start_broker()
        state = tmp / "state"
        cmd = ["prlimit", "--nofile=1024:1024", sys.executable, "-m", "genre_stream", "run", "--realtime",
               "--mqtt", f"mqtt://127.0.0.1:{mqtt_port}", "--homeassistant", "--state-dir", str(state),
               "--http", f"127.0.0.1:{http_port}", "--stats-interval", "30", "--source", f"air=file:{live}",
               "--source", f"inbox=watch:{inbox}"]
        log_path = tmp / "daemon.log"
        daemon = subprocess.Popen(cmd, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.DEVNULL,
                                  stderr=open(log_path, "wb"))
        counter = Counter(mqtt_port)
        stop = threading.Event()
        answers: dict[str, int] = {}
        samples: list[dict] = []
        written: list[str] = []
        held: list[socket.socket] = []
        floods = flaps = 0
        stop_seconds = None
        try:
            wait_port(http_port)
            held = dashboard_clients(http_port, args.clients, stop, answers)
            start = time.monotonic()
            minute = 0
            while time.monotonic() - start < seconds:
                if daemon.poll() is not None:
                    raise RuntimeError(f"the daemon exited ({daemon.returncode}); see {log_path}")
                written += hostile_batch(inbox, work, minute, demo)
                if minute % 3 == 2:
                    broker.terminate()
                    broker.wait(10)
                    time.sleep(10)
                    broker = start_broker()
                    flaps += 1
                if minute % 5 == 1:
                    flood(mqtt_port, 5000)
                    floods += 1
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=10) as r:
                        health = r.status
                except (urllib.error.URLError, OSError) as exc:
                    health = getattr(exc, "code", None) or str(exc)
                pid = daemon.pid  # prlimit execs the daemon: the same process
                samples.append({"t": time.monotonic(), "rss_mb": process_rss_mb(pid), "cpu_s": process_cpu_seconds(pid),
                                "fds": len(os.listdir(f"/proc/{pid}/fd")), "healthz": health})
                minute += 1
                time.sleep(max(0.0, start + minute * 60 - time.monotonic()))
            time.sleep(30)  # let the last files and the queue drain
        finally:
            stop.set()
            for s in held:
                s.close()
            t0 = time.monotonic()
            daemon.terminate()
            try:
                daemon.wait(60)
                stop_seconds = round(time.monotonic() - t0, 2)
            except subprocess.TimeoutExpired:
                daemon.kill()
            time.sleep(3)
            counter.close()
            broker.terminate()
            broker.wait(10)
        with sqlite3.connect(state / "history.sqlite") as db:
            made = [json.loads(p) for (p,) in db.execute("SELECT payload FROM states ORDER BY id")]
            made_events = [json.loads(p) for (p,) in db.execute("SELECT payload FROM events ORDER BY id")]
        log_lines = log_path.read_text(errors="replace").splitlines()
        shutil.copy(log_path, args.out.with_suffix(".log"))
    key = lambda m: (m.get("source"), m.get("timestamp"), m.get("type"))  # noqa: E731
    got = [key(m) for m in counter.states]
    not_delivered = len({key(m) for m in made} - set(got))
    newest = {m["source"]: key(m) for m in made}
    got_events = [key(m) for m in counter.events]
    events_lost = len({key(m) for m in made_events} - set(got_events))
    outcomes: dict[str, int] = {}
    for e in made_events:
        if e.get("type") in ("track_tagged", "error") and e.get("path"):
            name = plain(Path(e["path"]).name)
            outcomes[name] = outcomes.get(name, 0) + 1
    not_once = sorted(n for n in written if outcomes.get(plain(n), 0) != 1)
    per10 = []
    for k in range(0, len(samples) - 1, 10):
        a, b = samples[k], samples[min(k + 10, len(samples) - 1)]
        per10.append({"minutes": [k, min(k + 10, len(samples) - 1)], "rss_mb_end": round(b["rss_mb"], 1), "fds_end": b["fds"],
                      "cpu_percent_of_one_core": round(100 * (b["cpu_s"] - a["cpu_s"]) / max(1e-9, b["t"] - a["t"]), 2)})
    report = {
        "benchmark": "hostile soak (issue 24): live source + hostile watch folder + flapping broker + birth floods + dashboard clients at 1024 fds",
        "machine": machine_info(),
        "minutes": args.minutes,
        "states_made": len(made), "states_delivered": len(got),
        # retained states superseded while the broker was away are coalesced by design (the outbox keeps a topic's newest)
        "states_not_delivered_superseded": not_delivered,
        "newest_state_per_source_delivered": all(k in set(got) for k in newest.values()),
        "events_made": len(made_events), "events_lost": events_lost,
        "duplicate_deliveries": {"states": len(got) - len(set(got)), "events": len(got_events) - len(set(got_events))},
        "watched_files": len(written), "watched_files_without_exactly_one_outcome": not_once[:20],
        "broker_restarts": flaps, "birth_floods": floods, "birth_messages": floods * 5000,
        "dashboard_clients": args.clients, "dashboard_answers": answers,
        "healthz": sorted({str(s["healthz"]) for s in samples}),
        "per_10_minutes": per10,
        "rss_drift_mb": round(per10[-1]["rss_mb_end"] - per10[0]["rss_mb_end"], 1) if per10 else None,
        "fds_min_max": [min(s["fds"] for s in samples), max(s["fds"] for s in samples)] if samples else None,
        "stop_seconds": stop_seconds,
        "log_lines": len(log_lines), "log_tracebacks": sum("Traceback" in line for line in log_lines),
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
