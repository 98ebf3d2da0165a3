"""The daemon end to end: `genre-stream run` processes with real file sources, real brokers,
signals and exit codes; plus in-process composition checks with small in-test sources."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from brokers import Broker, Subscriber, free_port
from conftest import REPO, cli_env, run_cli

from genre_stream.app.daemon import EXIT_OK, Daemon
from genre_stream.config import DaemonConfig, load_config
from genre_stream.sinks import Fanout
from genre_stream.sinks.jsonl import JsonlSink
from genre_stream.sources import AudioChunk, Source, SourceProblem, TrackReady

SR = 22050


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """examples/demo.wav (12 s), or an equivalent synthetic clip where the lead's file is absent."""
    path = REPO / "examples" / "demo.wav"
    if path.is_file():
        return path
    t = np.arange(12 * SR) / SR
    audio = 0.3 * np.sin(2 * np.pi * 110 * t) * (1 + np.sign(np.sin(2 * np.pi * 2 * t))) / 2
    out = tmp_path_factory.mktemp("demo") / "demo.wav"
    sf.write(out, audio.astype(np.float32), SR)
    return out


@pytest.fixture(scope="module")
def long_clip(demo: Path, tmp_path_factory) -> Path:
    """60 s (the demo repeated) so a realtime source is still running while a test signals the daemon."""
    audio, sr = sf.read(demo, dtype="float32")
    out = tmp_path_factory.mktemp("long") / "long.wav"
    sf.write(out, np.tile(audio, 5), sr)
    return out


def spawn(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    out = open(tmp_path / "stdout.txt", "w")
    err = open(tmp_path / "stderr.txt", "w")
    return subprocess.Popen([sys.executable, "-m", "genre_stream", "-v", "run", *args], env=cli_env(env), cwd=REPO, stdout=out, stderr=err)


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------- processes


def test_run_without_broker_prints_json_lines_and_exits_0(demo: Path, tmp_path: Path) -> None:
    result = run_cli("run", "--source", f"file:{demo}", "--fast", "--state-dir", str(tmp_path), timeout=120)
    assert result.returncode == 0, result.stderr
    out = [json.loads(line) for line in result.stdout.splitlines()]
    states = [m for m in out if "state" in m]
    events = [m for m in out if "type" in m]
    # 12 s at hop 5 / min fill 10: one window at 10 s, one more for the end of the file.
    assert [round(s["window_end"]) for s in states] == [10, 12]
    assert all(s["source"] == "file-demo" and s["state"] == "music" and s["genre"] in s["probabilities"] for s in states)
    assert all(abs(sum(s["probabilities"].values()) - 1) < 1e-3 and s["timestamp"].endswith("Z") for s in states)
    assert events[0]["type"] == "genre_changed" and events[0]["from"] is None and events[0]["to"] == states[0]["genre"]


def test_run_publishes_the_same_messages_to_mqtt_and_jsonl(broker: Broker, demo: Path, tmp_path: Path) -> None:
    sub = Subscriber(broker.port, ["genre-stream/#", "homeassistant/#"])
    jsonl = tmp_path / "out.jsonl"
    result = run_cli(
        "run", "--source", f"file:{demo}", "--fast", "--mqtt", broker.url, "--jsonl", str(jsonl),
        "--state-dir", str(tmp_path / "state"), "--client-id", "daemon-test", timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""  # with a broker and --jsonl FILE, stdout stays quiet
    written = lines(jsonl)
    msgs = sub.wait_for(lambda ms: [m.payload for m in ms if m.topic == "genre-stream/status"] == [b"online", b"offline"])
    on = lambda topic: [m.json() for m in msgs if m.topic == topic]  # noqa: E731
    assert on("genre-stream/file-demo/state") == [m for m in written if "state" in m]
    assert on("genre-stream/file-demo/event") == [m for m in written if "type" in m]
    assert {m.topic for m in msgs if m.topic.startswith("homeassistant/")} == {
        "homeassistant/binary_sensor/genre_stream/bridge_status/config",
        "homeassistant/binary_sensor/genre_stream/file-demo_audio/config",
        "homeassistant/sensor/genre_stream/file-demo_genre/config",
        "homeassistant/sensor/genre_stream/file-demo_confidence/config",
        "homeassistant/event/genre_stream/file-demo_genre_change/config",
        "homeassistant/sensor/genre_stream/file-demo_errors/config",
        "homeassistant/sensor/genre_stream/file-demo_real_time_factor/config",
    }
    # audio flowing, then the file ended (an "offline" before the first audio may be coalesced
    # with "online" while the sink is still connecting: the queue keeps a retained topic's newest)
    assert [m.payload for m in msgs if m.topic == "genre-stream/file-demo/availability"][-2:] == [b"online", b"offline"]
    assert msgs[-1].topic == "genre-stream/status" and msgs[-1].payload == b"offline"
    sub.close()


def test_uncertain_state_reaches_mqtt_with_probabilities_and_no_genre_changed(broker: Broker, demo: Path, tmp_path: Path) -> None:
    """Thresholds no answer can pass: every state is "uncertain" (genre and probabilities kept), no change is announced."""
    sub = Subscriber(broker.port, ["genre-stream/#"])
    config = tmp_path / "config.toml"
    config.write_text("[pipeline]\nuncertain_threshold = 0.999\n")
    result = run_cli("run", "--config", str(config), "--source", f"file:{demo}", "--fast", "--mqtt", broker.url,
                     "--uncertain-margin", "0.99", "--state-dir", str(tmp_path / "state"), timeout=120)
    assert result.returncode == 0, result.stderr
    msgs = sub.wait_for(lambda ms: [m.payload for m in ms if m.topic == "genre-stream/status"] == [b"online", b"offline"])
    states = [m.json() for m in msgs if m.topic == "genre-stream/file-demo/state"]
    assert len(states) == 2 and all(s["state"] == "uncertain" for s in states)
    assert all(s["genre"] in s["probabilities"] and abs(sum(s["probabilities"].values()) - 1) < 1e-3 for s in states)
    assert [m.json()["type"] for m in msgs if m.topic == "genre-stream/file-demo/event"] == []
    sub.close()


def test_sigterm_stops_gracefully_with_stats_and_offline(any_broker: Broker, long_clip: Path, tmp_path: Path) -> None:
    sub = Subscriber(any_broker.port, ["genre-stream/#"])
    proc = spawn(tmp_path, "--source", f"live=file:{long_clip}", "--realtime", "--mqtt", any_broker.url,
                 "--state-dir", str(tmp_path / "state"), "--stats-interval", "1", "--min-fill", "2", "--hop", "1")
    try:
        msgs = sub.wait_for(lambda ms: any(m.topic == "genre-stream/live/state" for m in ms)
                            and any(m.topic == "genre-stream/live/stats" for m in ms), timeout=60)
        stats = [m.json() for m in msgs if m.topic == "genre-stream/live/stats"][-1]
        for key in ("windows", "inference_ms_mean", "real_time_factor", "position_seconds", "mqtt_queue", "errors"):
            assert key in stats, key
        assert stats["model_precision"] == "int8"  # --model auto on a CPU: the bundled int8 (genre_stream.model.choice)
        assert not (tmp_path / "state" / "model-choice.json").exists()  # a rule, nothing measured or cached
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == EXIT_OK
    finally:
        proc.kill()
    sub.wait_for(lambda ms: ms[-1].topic == "genre-stream/status" and ms[-1].payload == b"offline", timeout=10)
    err = (tmp_path / "stderr.txt").read_text()
    assert "received SIGTERM; stopping" in err
    assert "model bbnn-gtzan-augmented-fold0 int8 on CPU [auto -> int8 (CPU; int8 with 7-bit weights" in err  # the start line says why
    sub.close()


def test_sighup_reloads_sources_without_reconnecting(any_broker: Broker, long_clip: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    base = f'stats_interval = 0\n[pipeline]\nmin_fill_seconds = 2\nhop_seconds = 1\n[mqtt]\nurl = "{any_broker.url}"\n'
    config.write_text(f'sources = ["one=file:{long_clip}"]\n' + base)
    sub = Subscriber(any_broker.port, ["genre-stream/#"])
    proc = spawn(tmp_path, "--config", str(config), "--state-dir", str(tmp_path / "state"))
    try:
        sub.wait_for(lambda ms: any(m.topic == "genre-stream/one/state" for m in ms), timeout=60)
        config.write_text(f'sources = ["one=file:{long_clip}", "two=file:{long_clip}"]\n' + base)
        proc.send_signal(signal.SIGHUP)
        sub.wait_for(lambda ms: any(m.topic == "genre-stream/two/state" for m in ms), timeout=30)
        config.write_text('sources = ["one=file:/x.wav"]\n[pipeline]\nhop_seconds = -1\n')  # broken: must be refused
        proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        count = len(sub.messages)
        sub.wait_for(lambda ms: len(ms) > count + 2, timeout=20)  # still running, both sources
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == EXIT_OK
    finally:
        proc.kill()
    msgs = sub.wait_for(lambda ms: ms[-1].payload == b"offline", timeout=10)
    # One connection for the whole run: a reconnect would have published "online" again.
    assert [m.payload for m in msgs if m.topic == "genre-stream/status"] == [b"online", b"offline"]
    err = (tmp_path / "stderr.txt").read_text()
    assert "reload: source two added" in err
    assert "reload failed, keeping the running configuration: pipeline.hop_seconds = -1.0" in err, err


def test_unreachable_broker_exit_75_then_queue_delivered_after_restart(demo: Path, tmp_path: Path) -> None:
    port = free_port()
    state = tmp_path / "state"
    env = {"GENRE_STREAM_MQTT_FLUSH_TIMEOUT": "0.5", "GENRE_STREAM_MQTT_RECONNECT_MIN": "0.2"}
    first = run_cli("run", "--source", f"first=file:{demo}", "--fast", "--mqtt", f"mqtt://127.0.0.1:{port}",
                    "--jsonl", str(tmp_path / "first.jsonl"), "--state-dir", str(state), env=env, timeout=120)
    assert first.returncode == 75, first.stderr
    assert f"MQTT broker mqtt://127.0.0.1:{port} unreachable (Connection refused)" in first.stderr
    assert "not delivered" in first.stderr and "sent first on the next start" in first.stderr

    kind = "mosquitto" if __import__("shutil").which("mosquitto") else "amqtt"
    b = Broker(kind, tmp_path, port=port).start()
    try:
        sub = Subscriber(port, ["genre-stream/+/event"])
        second = run_cli("run", "--source", f"second=file:{demo}", "--fast", "--mqtt", b.url,
                         "--state-dir", str(state), env=env, timeout=120)
        assert second.returncode == 0, second.stderr
        events = [m.json() for m in sub.wait_for(lambda ms: any(m.json()["source"] == "second" for m in ms))]
        queued = [m for m in lines(tmp_path / "first.jsonl") if "type" in m]
        assert queued and events[: len(queued)] == queued  # the first run's events, first and in order
        sub.close()
    finally:
        b.stop()


def test_bad_tls_file_exits_78_naming_the_file(demo: Path, tmp_path: Path) -> None:
    bad = tmp_path / "broken-ca.pem"
    bad.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    result = run_cli("run", "--source", f"file:{demo}", "--mqtt", "mqtts://127.0.0.1:8883", "--ca-file", str(bad),
                     "--state-dir", str(tmp_path), timeout=120)
    assert result.returncode == 78
    assert "configuration error: mqtt.ca_file" in result.stderr and "broken-ca.pem" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--source", "file:x.wav", "--hop", "0"], "pipeline.hop_seconds = 0.0 (from command line): must be in (0, 3600]"),
        ([], "sources: none configured"),
        (["--source", "file:x.wav", "--uncertain-threshold", "1.5"], "pipeline.uncertain_threshold = 1.5 (from command line): must be in [0, 1)"),
    ],
)
def test_bad_config_exits_78_with_the_reason(args: list[str], message: str, tmp_path: Path) -> None:
    result = run_cli("run", "--state-dir", str(tmp_path), *args, env={"GENRE_STREAM_CONFIG": ""}, timeout=120)
    assert result.returncode == 78, result.stderr
    assert message in result.stderr


# ---------------------------------------------------------------- in-process composition


class ScriptedSource(Source):
    """A source that plays a script of items; ``crash_first`` makes its first run raise."""

    def __init__(self, source_id: str, items: list, finite: bool = True, crash_first: bool = False) -> None:
        self.id = source_id
        self.finite = finite
        self.items = items
        self.crash_first = crash_first
        self.runs = 0
        self.done: list[tuple[Path, bool]] = []

    def run(self, emit, stop: threading.Event) -> None:
        self.runs += 1
        if self.crash_first and self.runs == 1:
            raise RuntimeError("device exploded")
        for item in self.items:
            emit(item)
        if not self.finite:
            stop.wait()

    def mark_done(self, path: Path, ok: bool) -> None:
        self.done.append((path, ok))

    def retry_later(self, path: Path) -> bool:
        return False


def test_composition_tracks_problems_and_crashes(engine, demo: Path, tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF....WAVEfmt garbage")
    audio, _ = sf.read(demo, dtype="float32")
    chunks = [AudioChunk("live", audio[i : i + 4410], i / SR, time.monotonic()) for i in range(0, audio.size, 4410)]
    sources = {
        "folder": ScriptedSource("folder", [TrackReady("folder", demo), TrackReady("folder", corrupt)]),
        "live": ScriptedSource("live", chunks, finite=False, crash_first=True),
        "net": ScriptedSource("net", [SourceProblem("net", "stream dropped", None)]),
    }
    config = DaemonConfig(sources=list(sources), state_dir=tmp_path, stats_interval=0)
    config.mqtt.flush_timeout = 0.5
    out = tmp_path / "out.jsonl"
    daemon = Daemon(config, engine=engine, sinks=Fanout([JsonlSink(str(out))]), source_factory=lambda spec, cfg: sources[spec])
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(daemon.run()))
    thread.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(m.get("source") == "live" and "state" in m for m in (lines(out) if out.exists() else [])):
        time.sleep(0.1)
    daemon.request_stop()
    thread.join(20)
    assert result == [EXIT_OK]
    msgs = lines(out)
    tagged = [m for m in msgs if m.get("type") == "track_tagged"]
    assert len(tagged) == 1 and tagged[0]["path"] == str(demo) and tagged[0]["genre"] in tagged[0]["probabilities"]
    errors = {(m["source"], m["reason"].split(":")[0]) for m in msgs if m.get("type") == "error"}
    assert ("folder", str(corrupt)) in errors  # the corrupt file, named
    assert ("net", "stream dropped") in errors
    assert ("live", "source failed") in errors  # the crash was reported...
    assert sources["live"].runs == 2  # ...and the live source restarted
    assert any(m.get("source") == "live" and m.get("state") == "music" for m in msgs)
    assert sources["folder"].done == [(demo, True), (corrupt, False)]


def test_finite_sources_end_the_run(engine, demo: Path, tmp_path: Path) -> None:
    config = load_config(None, {"sources": [f"file:{demo}"], "realtime": False, "state_dir": str(tmp_path), "stats_interval": 0}, environ={})
    out = tmp_path / "out.jsonl"
    code = Daemon(config, engine=engine, sinks=Fanout([JsonlSink(str(out))])).run()
    assert code == EXIT_OK
    assert [round(m["window_end"]) for m in lines(out) if "state" in m] == [10, 12]  # incl. the final flush


class WindowRecorder:
    """A pipeline listener (as the dashboard is one) that keeps what it hears."""

    def __init__(self) -> None:
        self.windows: list = []
        self.mel_sources: set[str] = set()

    def mel_updated(self, source: str, ring) -> None:
        self.mel_sources.add(source)

    def window_classified(self, window) -> None:
        self.windows.append(window)


def test_pipeline_listeners_hear_every_window_the_sinks_get(engine, demo: Path, tmp_path: Path) -> None:
    config = load_config(None, {"sources": [f"demo=file:{demo}"], "realtime": False, "state_dir": str(tmp_path), "stats_interval": 0}, environ={})
    out = tmp_path / "out.jsonl"
    recorder = WindowRecorder()
    assert Daemon(config, engine=engine, sinks=Fanout([JsonlSink(str(out))]), listeners=[recorder]).run() == EXIT_OK
    published = [(m["window_end"], m["state"], m["genre"]) for m in lines(out) if "state" in m]
    heard = [(m.window_end, m.state, m.genre) for w in recorder.windows for m in w.messages if hasattr(m, "window_end")]
    assert heard == published and len(published) == 2  # the final flush included
    assert all(w.source == "demo" and w.inference_seconds for w in recorder.windows)
    assert recorder.mel_sources == {"demo"}


def test_default_log_level_says_what_the_daemon_does_and_warns_once(demo: Path, tmp_path: Path) -> None:
    """No -v: a start banner, genre changes and sources going up/down; a source problem is one line, not two."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "notes.txt").write_text("not audio")
    err = tmp_path / "stderr.txt"
    with open(err, "w") as errfile:
        proc = subprocess.Popen([sys.executable, "-m", "genre_stream", "run", "--source", f"demo=file:{demo}", "--source", f"inbox=watch:{inbox}",
                                 "--fast", "--state-dir", str(tmp_path / "state"), "--stats-interval", "0", "--jsonl", str(tmp_path / "out.jsonl")],
                                env=cli_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=errfile)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not ("demo: down" in err.read_text() and "notes.txt" in err.read_text()):
                time.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
        finally:
            proc.kill()
    log = err.read_text()
    banner = [line for line in log.splitlines() if "genre-stream " in line and "sources " in line]
    assert len(banner) == 1, log
    assert "demo (file), inbox (watch)" in banner[0] and "model bbnn-gtzan-augmented-fold0 int8 on CPU [auto -> int8 (" in banner[0]
    assert f"outputs {tmp_path / 'out.jsonl'}, history {tmp_path / 'state' / 'history.sqlite'}" in banner[0]
    assert "INFO genre_stream.live.pipeline: demo: genre country (" in log  # the first genre, no "None ->"
    assert "demo: up (audio flowing)" in log and "demo: down" in log and "inbox: up (watching)" in log
    assert log.count("unsupported format '.txt'") == 1, log
