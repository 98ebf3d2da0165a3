"""The dashboard HTTP server, for real: aiohttp on a loopback port, urllib as the client."""

from __future__ import annotations

import base64
import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from _helpers_dashboard import ARTIFACTS, LABELS, changed, state
from conftest import REPO, cli_env, free_port, run_cli, shared_path
from dashboards import LiveClient, publish, serve
from prometheus_client.parser import text_string_to_metric_families

from genre_stream.audio.frontend import MelRingBuffer
from genre_stream.config.http import DashboardConfig, HttpSettings, parse_address
from genre_stream.dashboard.metrics import SinkMetrics, SourceMetrics
from genre_stream.dashboard.server import DashboardError, DashboardServer
from genre_stream.dashboard.state import MEL_DB_MIN, MEL_DB_STEP, DashboardState, encode_mel
from genre_stream.live.pipeline import ClassifiedWindow
from genre_stream.sinks import Fanout, ModelSummary
from genre_stream.sinks.messages import GenreEvent, SourceStats

TOKEN = "s3cret-token"


# -- binding ---------------------------------------------------------------------------
def test_parse_address_and_loopback_rule():
    assert parse_address("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_address(":9000") == ("127.0.0.1", 9000)
    assert parse_address("9000") == ("127.0.0.1", 9000)
    assert parse_address("[::1]:8080") == ("::1", 8080)
    for bad, why in [("localhost:http", "not a number"), ("1.2.3.4:70000", "above 65535"), ("a:b:c", "HOST:PORT")]:
        with pytest.raises(ValueError, match=why):
            parse_address(bad)
    with pytest.raises(ValueError, match=r"0\.0\.0\.0:8080 is not a loopback address.*allow_remote = true in \[http\]"):
        DashboardConfig.from_address("0.0.0.0:8080")
    with pytest.raises(ValueError, match=r"'dashboard\.example': give an IP address"):
        DashboardConfig(host="dashboard.example")
    assert DashboardConfig.from_address("0.0.0.0:8080", allow_remote=True).host == "0.0.0.0"
    # The config-file section: off unless listen is set; validated as it is loaded.
    assert HttpSettings().dashboard() is None
    assert HttpSettings(listen="8080", token="t").dashboard() == DashboardConfig("127.0.0.1", 8080, "t")
    with pytest.raises(ValueError, match="not a loopback address"):
        HttpSettings(listen="192.168.1.5:8080")


def test_binds_loopback_unless_remote_is_asked(tmp_path):
    s = serve(tmp_path)
    try:
        assert listening_addresses(s.server.port) == {"127.0.0.1"}
        assert s.get("/healthz")[0] == 200
    finally:
        s.server.stop()
        s.history.close()
    s = serve(tmp_path, host="0.0.0.0", allow_remote=True, token=TOKEN)
    try:
        assert listening_addresses(s.server.port) == {"0.0.0.0"}
        # Reached here over loopback only; the point is what the socket is bound to.
        assert s.get("/healthz")[0] == 200
    finally:
        s.server.stop()
        s.history.close()


def test_port_in_use_is_a_clear_error(tmp_path, served):
    busy = DashboardServer(DashboardConfig(port=served.server.port), served.state)
    with pytest.raises(DashboardError, match=rf"cannot listen on 127\.0\.0\.1:{served.server.port}"):
        busy.start()


# -- token ------------------------------------------------------------------------------
def test_token_protects_everything_but_healthz(tmp_path):
    s = serve(tmp_path, token=TOKEN)
    try:
        for path in ["/", "/static/app.js", "/api/sources", "/api/history", "/metrics", "/api/live"]:
            status, headers, _ = s.get(path)
            assert status == 401, path
            assert headers["WWW-Authenticate"].startswith("Bearer")
            assert s.get(path, token="wrong")[0] == 401, path
        assert s.get("/api/sources", token=TOKEN)[0] == 200
        assert s.get("/metrics", token=TOKEN)[0] == 200
        # A browser opens /?token=... once and keeps the token as a cookie for the page's own requests.
        status, headers, _ = s.get(f"/?token={TOKEN}")
        assert status == 200
        cookie = headers["Set-Cookie"]
        assert cookie.startswith(f"genre_stream_token={TOKEN};") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        with_cookie = urllib.request.Request(s.base + "/api/sources", headers={"Cookie": f"genre_stream_token={TOKEN}"})
        with urllib.request.urlopen(with_cookie, timeout=10) as r:
            assert r.status == 200
        bad_cookie = urllib.request.Request(s.base + "/api/sources", headers={"Cookie": "genre_stream_token=nope"})
        with pytest.raises(urllib.error.HTTPError, match="401"):
            urllib.request.urlopen(bad_cookie, timeout=10)
        status, _, body = s.get("/healthz")
        assert status == 200 and json.loads(body)["status"] == "ok"
    finally:
        s.server.stop()
        s.history.close()


# -- static files -------------------------------------------------------------------------
def test_serves_only_its_own_page(served):
    status, headers, body = served.get("/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'<script src="static/app.js">' in body
    status, headers, body = served.get("/static/app.js")
    assert status == 200 and b"EventSource" in body
    assert served.get("/static/style.css")[0] == 200
    for path in ["/static/..%2f..%2fhistory.py", "/static/../../../etc/passwd", "/static/history.sqlite",
                 "/static/%2Fetc%2Fpasswd", "/etc/passwd", "/static/"]:
        status, _, body = served.get(path)
        assert status == 404, path
        assert b"root:" not in body


# -- API ----------------------------------------------------------------------------------
def test_api_sources_gives_the_mqtt_payloads(served):
    served.state.add_source("radio")
    assert served.json("/api/sources")["sources"] == [
        {"source": "radio", "status": "waiting", "state": None, "last_event": None, "error": None,
         "kind": None, "online": None, "stale_after": None, "retry_at": None, "changes": [], "tracks": [], "corrected": {}}
    ]
    now = time.time()
    first, second = state("radio", "rock", 0.8, now - 5), state("radio", None, 0.0, now, "silence")
    publish(served, first)
    publish(served, changed("radio", "jazz", "rock", now - 5))
    publish(served, second)
    doc = served.json("/api/sources")
    assert doc["labels"] == LABELS and doc["model"] == "test-model" and doc["precision"] == "int8"
    (radio,) = doc["sources"]
    assert radio["state"] == second.to_dict() and radio["status"] == "silence"
    assert radio["last_event"] == changed("radio", "jazz", "rock", now - 5).to_dict()

    error = GenreEvent.error("radio", "stream dropped: connection refused")
    publish(served, error)
    (radio,) = served.json("/api/sources")["sources"]
    assert radio["status"] == "error" and radio["error"] == error.to_dict()
    publish(served, state("radio", "rock", 0.9, time.time()))
    assert served.json("/api/sources")["sources"][0]["status"] == "music"  # recovered


def test_api_history(served):
    now = time.time()
    msgs = [state("radio", "rock", 0.8, now - 20), state("radio", "rock", 0.6, now - 15),
            state("radio", "jazz", 0.7, now - 10), state("tv", "pop", 0.9, now - 10)]
    for m in msgs:
        publish(served, m)
    publish(served, changed("radio", "rock", "jazz", now - 10))
    served.history.close()  # flush the writer; the server reads the file
    doc = served.json("/api/history?source=radio&since=-1h")
    assert doc["kind"] == "segments"
    assert [(i["genre"], i["windows"], i["confidence"]) for i in doc["items"]] == [("rock", 2, 0.7), ("jazz", 1, 0.7)]
    doc = served.json("/api/history?kind=states&source=radio&since=-1h&limit=2")
    assert doc["items"] == [msgs[1].to_dict(), msgs[2].to_dict()]
    doc = served.json("/api/history?kind=events&since=-1h")
    assert doc["items"] == [changed("radio", "rock", "jazz", now - 10).to_dict()]
    assert served.json("/api/history?kind=states&since=-1h&until=-1m")["items"] == []
    for query, why in [("kind=files", "kind='files'"), ("since=teatime", "not a time"), ("limit=ten", "whole number")]:
        status, _, body = served.get("/api/history?" + query)
        assert status == 400 and why in json.loads(body)["error"], query


# -- metrics ----------------------------------------------------------------------------
def test_metrics_parse_with_prometheus_parser(served):
    stats = SourceMetrics(real_time_factor=0.012, overflows=3, queue_depth=2, reconnects=1)
    served.state.add_source("radio", lambda: stats)
    served.state.set_sink_metrics(lambda: SinkMetrics(mqtt_connected=True, events_published=41, events_queued=5))
    served.state.set_history_metrics(served.history.counters)
    for seconds in (0.02, 0.03, 0.2):
        served.state.observe_inference("radio", seconds)
    publish(served, state("radio", "rock", 0.8, time.time()))
    publish(served, changed("radio", "jazz", "rock", time.time()))

    status, headers, body = served.get("/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert families["genre_stream_inference_seconds"].type == "histogram"
    assert samples[("genre_stream_inference_seconds_count", (("source", "radio"),))] == 3
    assert samples[("genre_stream_inference_seconds_sum", (("source", "radio"),))] == pytest.approx(0.25)
    assert samples[("genre_stream_inference_seconds_bucket", (("le", "0.035"), ("source", "radio")))] == 2
    assert samples[("genre_stream_real_time_factor", (("source", "radio"),))] == pytest.approx(0.012)
    assert samples[("genre_stream_overflows_total", (("source", "radio"),))] == 3
    assert samples[("genre_stream_queue_depth", (("source", "radio"),))] == 2
    assert samples[("genre_stream_mqtt_connected", ())] == 1
    assert samples[("genre_stream_events_published_total", ())] == 41
    assert samples[("genre_stream_events_queued", ())] == 5
    assert samples[("genre_stream_states_total", (("source", "radio"), ("state", "music")))] == 1
    assert samples[("genre_stream_events_total", (("source", "radio"), ("type", "genre_changed")))] == 1
    assert ("genre_stream_history_write_errors_total", ()) in samples
    # Values are read at scrape time: a change shows in the next scrape.
    stats.overflows = 7
    body = served.get("/metrics")[2].decode()
    assert 'genre_stream_overflows_total{source="radio"} 7.0' in body


# -- live stream ------------------------------------------------------------------------
class CountingRing(MelRingBuffer):
    def __init__(self) -> None:
        super().__init__()
        self.copies = 0

    def latest(self) -> np.ndarray:
        self.copies += 1
        return super().latest()


def test_live_stream_states_events_and_mel(served):
    ring = CountingRing()
    rng = np.random.default_rng(0)
    ring.extend(rng.random((100, 128), dtype=np.float32) * 1000)
    served.state.offer_mel("radio", ring)
    assert ring.copies == 0  # nobody watching: the rolling buffer is not even copied

    client = LiveClient(served.base)
    try:
        hello = client.wait("hello")[0]
        assert hello["labels"] == LABELS
        msg = state("radio", "country", 0.75, time.time())
        served.state.publish(msg)
        assert client.wait("state")[0] == msg.to_dict()
        served.state.publish(changed("radio", "rock", "country", time.time()))
        assert client.wait("event")[0]["type"] == "genre_changed"

        served.state.offer_mel("radio", ring)
        full = client.wait("mel")[0]
        assert full["full"] and full["total"] == 100 and full["count"] == 100 and full["n_mels"] == 128
        frames = np.frombuffer(base64.b64decode(full["frames"]), dtype=np.uint8).reshape(100, 128)
        assert np.array_equal(frames, encode_mel(ring.latest()))
        assert full["level_db"] == MEL_DB_MIN + frames[-100:].max() * MEL_DB_STEP  # the meter: loudest bin
        # Decoding per the payload's own scale gives back the dB values (to the 0.5 dB step).
        db = 10 * np.log10(np.maximum(ring.latest(), 1e-10))
        assert np.allclose(full["db_min"] + frames * full["db_step"], np.clip(db, MEL_DB_MIN, None), atol=MEL_DB_STEP)

        new = rng.random((20, 128), dtype=np.float32) * 1000
        ring.extend(new)
        time.sleep(0.06)  # past mel_interval_seconds
        served.state.offer_mel("radio", ring)
        delta = client.wait("mel", 2)[1]
        assert not delta["full"] and delta["total"] == 120 and delta["count"] == 20
        got = np.frombuffer(base64.b64decode(delta["frames"]), dtype=np.uint8).reshape(20, 128)
        assert np.array_equal(got, encode_mel(new))
        assert delta["level_db"] == MEL_DB_MIN + got.max() * MEL_DB_STEP  # of the new frames only
        copies = ring.copies
        served.state.offer_mel("radio", ring)  # within the interval: no copy
        assert ring.copies == copies
    finally:
        client.close()
    deadline = time.monotonic() + 5
    while served.state.listener_count and time.monotonic() < deadline:
        time.sleep(0.02)
    assert served.state.listener_count == 0  # the closed page unsubscribed


def test_mel_updates_are_deltas_until_the_buffer_restarts():
    state_ = DashboardState(LABELS, "test-model", mel_interval_seconds=1e-9)
    got: list[dict] = []
    state_.subscribe(lambda kind, payload: got.append(payload) if kind == "mel" else None)
    ring = MelRingBuffer()
    ring.extend(np.ones((50, 128), np.float32))
    state_.offer_mel("radio", ring)
    ring.extend(np.ones((10, 128), np.float32))
    state_.offer_mel("radio", ring)
    state_.offer_mel("radio", ring)  # nothing new: nothing sent
    fresh = MelRingBuffer()  # SIGHUP changed the pipeline: a new, shorter buffer
    fresh.extend(np.ones((5, 128), np.float32))
    state_.offer_mel("radio", fresh)
    ring.extend(np.ones((700, 128), np.float32))  # more than the whole buffer since the last snapshot
    state_.offer_mel("radio", ring)
    assert [(p["full"], p["count"], p["total"]) for p in got] == [
        (True, 50, 50), (False, 10, 60), (True, 5, 5), (True, 647, 760)
    ]


def test_stop_closes_open_live_streams(tmp_path):
    s = serve(tmp_path)
    client = LiveClient(s.base)
    client.wait("hello")
    started = time.monotonic()
    s.server.stop()
    s.history.close()
    assert time.monotonic() - started < 5
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", s.server.port), timeout=1).close()


# -- the daemon's view ----------------------------------------------------------------------
@dataclass
class MqttState:
    """The attributes of MqttSink that the metrics read (connected, delivered, queue_depth)."""

    connected: threading.Event = field(default_factory=threading.Event)
    delivered: int = 0
    queue_depth: int = 0


def test_dashboard_sink_hooks(tmp_path):
    from genre_stream.dashboard.sink import DashboardSink
    from genre_stream.sinks import SourceInfo

    sink = DashboardSink(DashboardConfig(port=0), LABELS, "test-model", tmp_path / "history.sqlite")
    sink.start()
    try:
        counters = {"overflows": 4, "queue_depth": 1, "real_time_factor": 0.02}  # as the daemon's stats payload has them
        infos = {"radio": SourceInfo("radio", "stream", tuple(LABELS), 5.0, 60.0, stats=lambda: counters),
                 "tv": SourceInfo("tv", "stream", tuple(LABELS), 5.0, 60.0)}  # reports no counters
        sink.sources_changed([infos["radio"], infos["tv"]], "model-2")
        mqtt = MqttState(delivered=17, queue_depth=3)
        sink.watch_mqtt(mqtt)
        ring = MelRingBuffer()
        ring.extend(np.ones((10, 128), dtype=np.float32))
        page: list[tuple[str, dict]] = []
        unsubscribe = sink.state.subscribe(lambda kind, payload: page.append((kind, payload)))
        sink.mel_updated("radio", ring)  # new frames, no window classified: no observation
        unsubscribe()
        assert [(kind, p["source"], p["total"]) for kind, p in page] == [("mel", "radio", 10)]  # an open page sees them
        silence = state("radio", None, 0.0, time.time(), "silence")
        sink.window_classified(ClassifiedWindow("radio", (silence,), None))  # no inference ran
        music = state("radio", "rock", 0.8, time.time())
        sink.window_classified(ClassifiedWindow("radio", (music,), 0.042))
        sink.publish(music)
        sink.publish(SourceStats("radio", {"windows": 3}))  # periodic stats: served by /metrics, not the page
        base = sink.server.url.rstrip("/")
        with urllib.request.urlopen(base + "/metrics") as r:
            families = {f.name: f for f in text_string_to_metric_families(r.read().decode())}
        hist = {s.name: s.value for s in families["genre_stream_inference_seconds"].samples}
        assert hist["genre_stream_inference_seconds_count"] == 1
        assert hist["genre_stream_inference_seconds_sum"] == pytest.approx(0.042)
        assert [s.value for s in families["genre_stream_overflows"].samples] == [4]
        assert [s.value for s in families["genre_stream_mqtt_connected"].samples] == [0]
        assert [s.value for s in families["genre_stream_events_published"].samples] == [17]
        assert [s.value for s in families["genre_stream_events_queued"].samples] == [3]
        mqtt.connected.set()
        with urllib.request.urlopen(base + "/metrics") as r:
            assert "genre_stream_mqtt_connected 1.0" in r.read().decode()
        with urllib.request.urlopen(base + "/api/sources") as r:
            doc = json.loads(r.read())
        assert doc["model"] == "model-2"
        assert [(s["source"], s["status"]) for s in doc["sources"]] == [("radio", "music"), ("tv", "waiting")]
        # a reload that loads another export: the header follows (it kept the old precision and choice before)
        Fanout([sink]).model_changed(ModelSummary("model-3", "fp32", "named: model-3.onnx"))
        sink.sources_changed([infos["tv"]], "model-3")  # radio removed on reload
        with urllib.request.urlopen(base + "/api/sources") as r:
            doc = json.loads(r.read())
        assert [s["source"] for s in doc["sources"]] == ["tv"]
        assert (doc["model"], doc["precision"], doc["chosen"]) == ("model-3", "fp32", "named: model-3.onnx")
        with urllib.request.urlopen(base + "/metrics") as r:
            assert 'genre_stream_overflows_total{source="radio"}' not in r.read().decode()
    finally:
        assert sink.close(2.0)


# -- the daemon, a real browser -------------------------------------------------------------
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


def short_recording(tmp_path: Path, seconds: float) -> Path:
    """The first ``seconds`` of the shared country clip (the daemon plays it in real time)."""
    import soundfile as sf

    clip = shared_path("audio/gtzan-country.00000.wav")
    audio, sr = sf.read(clip, dtype="float32")
    out = tmp_path / "country-short.wav"
    sf.write(out, audio[: int(seconds * sr)], sr)
    return out


def start_daemon(tmp_path: Path, recording: Path, port: int, *extra: str, env: dict | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "genre_stream", "-v", "run", "--source", f"radio=file:{recording}", "--realtime",
           "--hop", "2", "--min-fill", "4", "--stats-interval", "0", "--threads", "1",
           "--state-dir", str(tmp_path / "state"), "--http", f"127.0.0.1:{port}", *extra]
    return subprocess.Popen(cmd, cwd=REPO, env=cli_env(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"daemon exited {proc.returncode}: {proc.stderr.read()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("the daemon's dashboard did not come up")


def chromium_driver(tmp_path: Path):
    """Debian's chromium, headless, through Debian's chromedriver: nothing is downloaded."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # script and CSP errors, for get_log
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1200,800",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def test_dashboard_in_a_real_browser_follows_the_daemon(tmp_path):
    """A daemon plays a recording; the page shows the source, the last MQTT state's genre, a growing timeline,
    and once the recording has ended, the source as offline."""
    from brokers import Broker, Subscriber, available
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    recording = short_recording(tmp_path, 16.0)
    kind = "mosquitto" if available("mosquitto") else "amqtt"
    broker = Broker(kind, tmp_path).start()
    subscriber = Subscriber(broker.port, ["genre-stream/radio/state"])
    port = free_port()
    daemon = start_daemon(tmp_path, recording, port, "--mqtt", broker.url, "--no-homeassistant",
                          env={"GENRE_STREAM_HTTP_TOKEN": TOKEN})
    driver = None
    try:
        wait_healthy(port, daemon)
        driver = chromium_driver(tmp_path)
        driver.get(f"http://127.0.0.1:{port}/?token={TOKEN}")
        wait = WebDriverWait(driver, 40, poll_frequency=0.1)
        card = wait.until(lambda d: d.find_element(By.ID, "source-radio"))
        assert card.find_element(By.CSS_SELECTOR, ".name").text == "radio"
        genre = card.find_element(By.CSS_SELECTOR, ".genre")
        wait.until(lambda d: genre.get_attribute("data-genre"))
        timeline = card.find_element(By.CSS_SELECTOR, ".timeline")
        first = int(timeline.get_attribute("data-windows"))
        assert first >= 1
        # As the audio plays, new windows are classified and the timeline grows.
        wait.until(lambda d: int(timeline.get_attribute("data-windows")) >= first + 2)
        wait.until(lambda d: int(card.find_element(By.CSS_SELECTOR, "canvas").get_attribute("data-total") or 0) > 0)
        assert len(card.find_elements(By.CSS_SELECTOR, ".bar")) == 10
        assert driver.find_element(By.ID, "mqtt").text == "MQTT connected"  # the daemon's real MQTT sink
        wait.until(lambda d: card.find_element(By.CSS_SELECTOR, ".level-db").text.endswith(" dBFS"))  # real audio
        ARTIFACTS.mkdir(exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "dashboard.png"))  # live, mid-recording
        assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000

        # The same daemon's /metrics: real inference timings, the real MQTT connection.
        req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            samples = {(s.name, s.labels.get("source")): s.value
                       for f in text_string_to_metric_families(r.read().decode()) for s in f.samples}
        assert samples[("genre_stream_inference_seconds_count", "radio")] >= 2
        assert 0 < samples[("genre_stream_inference_seconds_sum", "radio")] < 10
        assert 0 < samples[("genre_stream_real_time_factor", "radio")] < 1
        assert samples[("genre_stream_mqtt_connected", None)] == 1
        assert samples[("genre_stream_events_published_total", None)] >= 2
        assert samples[("genre_stream_history_written_total", None)] >= 1

        assert daemon.wait(60) == 0  # the recording ended
        states = [m.json() for m in subscriber.on("genre-stream/radio/state")]
        last = states[-1]
        expected = {"music": last["genre"], "uncertain": f"uncertain ({last['genre']}?)"}.get(last["state"], last["state"])
        # the page hears the last state through its live stream, which may trail the broker a little
        wait.until(lambda d: genre.get_attribute("textContent") == expected)
        # The recording ended, so the source is offline: the last genre stays, as "last heard", not as current.
        wait.until(lambda d: card.get_attribute("data-status") == "offline")
        assert "down" in card.get_attribute("class")
        assert card.find_element(By.CSS_SELECTOR, ".lastheard").text.startswith("last heard")
        top = card.find_element(By.CSS_SELECTOR, f'.bar[data-label="{last["genre"]}"] .pct').get_attribute("textContent")
        assert top == f"{last['probabilities'][last['genre']] * 100:.1f}%"
        assert int(timeline.get_attribute("data-windows")) == len(states)
    finally:
        if driver is not None:
            driver.quit()
        if daemon.poll() is None:
            daemon.terminate()
            daemon.wait(10)
        subscriber.close()
        broker.stop()


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a TCP listener on ``port``, from /proc/net/tcp (no traffic involved)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state_ = line.split()[1], line.split()[3]
        addr, p = local.split(":")
        if int(p, 16) == port and state_ == "0A":  # LISTEN
            found.add(socket.inet_ntoa(bytes.fromhex(addr)[::-1]))
    return found


def test_config_show_masks_the_token(monkeypatch):
    from click.testing import CliRunner

    from genre_stream.cli.main import main

    monkeypatch.setenv("GENRE_STREAM_HTTP_TOKEN", TOKEN)
    result = CliRunner().invoke(main, ["config", "show", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["http"]["token"] == "***" and TOKEN not in result.output


def test_daemon_binds_non_loopback_only_when_asked(tmp_path):
    demo = REPO / "examples" / "demo.wav"
    port = free_port()
    proc = subprocess.run([sys.executable, "-m", "genre_stream", "run", "--source", f"file:{demo}",
                           "--state-dir", str(tmp_path), "--http", f"0.0.0.0:{port}"],
                          capture_output=True, text=True, timeout=60, cwd=REPO, env=cli_env())
    assert proc.returncode == 78
    assert f"0.0.0.0:{port} is not a loopback address" in proc.stderr and "--http-allow-remote" in proc.stderr
    assert proc.stdout == ""  # refused before anything ran

    config = tmp_path / "remote.toml"
    config.write_text(f'[http]\nlisten = "0.0.0.0:{port}"\n')
    check = run_cli("config", "check", str(config), timeout=60)
    assert check.returncode == 78 and "[http]" in check.stderr and str(config) in check.stderr

    # Asked explicitly (config file + environment): it listens on all addresses, token required.
    daemon = subprocess.Popen(
        [sys.executable, "-m", "genre_stream", "run", "--config", str(config), "--source", f"file:{demo}",
         "--state-dir", str(tmp_path / "state"), "--stats-interval", "0"],
        cwd=REPO, env=cli_env({"GENRE_STREAM_HTTP_ALLOW_REMOTE": "1", "GENRE_STREAM_HTTP_TOKEN": TOKEN}),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_healthy(port, daemon)
        assert listening_addresses(port) == {"0.0.0.0"}
        with pytest.raises(urllib.error.HTTPError, match="401"):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/sources", timeout=5)
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(20) == 0
    assert (tmp_path / "state" / "history.sqlite").is_file()  # history is on by default


def test_daemon_default_http_is_loopback_and_busy_port_is_a_clear_error(tmp_path):
    demo = REPO / "examples" / "demo.wav"
    port = free_port()
    daemon = subprocess.Popen(
        [sys.executable, "-m", "genre_stream", "run", "--source", f"file:{demo}", "--state-dir", str(tmp_path / "a"),
         "--stats-interval", "0", "--http", str(port), "--no-history"],
        cwd=REPO, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_healthy(port, daemon)
        assert listening_addresses(port) == {"127.0.0.1"}
        second = subprocess.run(
            [sys.executable, "-m", "genre_stream", "run", "--source", f"file:{demo}", "--state-dir",
             str(tmp_path / "b"), "--http", f"127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=60, cwd=REPO, env=cli_env())
        assert second.returncode == 78
        assert f"http.listen: dashboard: cannot listen on 127.0.0.1:{port}" in second.stderr
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/history", timeout=5)
        assert refused.value.code == 404 and b"not enabled" in refused.value.read()
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(20) == 0
    assert not (tmp_path / "a" / "history.sqlite").exists()  # --no-history
