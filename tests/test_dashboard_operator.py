"""The dashboard as an operator's second screen (issue 13): availability and the stale look,
recent changes and files, errors folded behind a summary, reconnect countdown, MQTT state,
24 h / 7 d history with CSV export, spectrogram axes; the API, then a real browser."""

from __future__ import annotations

import csv
import io
import json
import math
import time

import numpy as np
import pytest
from _helpers_dashboard import ARTIFACTS, LABELS, changed, state
from dashboards import LiveClient, publish, serve
from test_dashboard import chromium_driver

from genre_stream.audio.frontend import FrontendConfig, MelRingBuffer
from genre_stream.config import DashboardConfig
from genre_stream.dashboard import server as server_module
from genre_stream.dashboard.metrics import SinkMetrics
from genre_stream.dashboard.sink import DashboardSink
from genre_stream.dashboard.state import RECENT_CHANGES, STALE_HOPS, spectrogram_axes
from genre_stream.sinks import SourceAvailability, SourceInfo
from genre_stream.sinks.messages import GenreEvent, parse_payload_time

RAW_FFMPEG = ("stream http://radio.example/live dropped: connection refused (ffmpeg exit status 1: "
              "[tcp @ 0x55d0c0a8e0c0] Connection to tcp://radio.example:80 failed: Connection refused; "
              "http://radio.example/live: Connection refused); reconnecting in 30 s")


def info(source: str, kind: str, hop: float = 2.0) -> SourceInfo:
    return SourceInfo(source, kind, tuple(LABELS), hop, 0.0)


def tagged(source: str, path: str, genre: str, confidence: float, kind: str = "music") -> GenreEvent:
    return GenreEvent("track_tagged", source, {"path": path, "genre": genre, "state": kind, "confidence": confidence,
                                               "probabilities": {genre: confidence}, "duration": 30.0})


def test_source_items_tell_offline_errors_folder_files_and_changes(served):
    served.state.set_sources([info("radio", "stream", hop=2.0), info("inbox", "watch")])
    client = LiveClient(served.base)
    try:
        radio, inbox = client.wait("hello")[0]["sources"]
        assert radio["stale_after"] == STALE_HOPS * 2.0 and radio["kind"] == "stream"
        assert inbox["stale_after"] is None and inbox["status"] == "watching"  # a folder has no windows

        now = time.time()
        publish(served, state("radio", "rock", 0.78, now))
        change = changed("radio", "jazz", "rock", now)
        publish(served, change)
        (item,) = client.wait("source")
        assert item["status"] == "music" and item["changes"] == [change.to_dict()]

        # Down: the availability wins over the last state, the raw error rides along with its retry time.
        served.state.publish(SourceAvailability("radio", False))
        error = GenreEvent.error("radio", RAW_FFMPEG)
        publish(served, error)
        down, failed = client.wait("source", 3)[1:]
        assert down["status"] == "offline" and down["online"] is False and down["state"]["genre"] == "rock"
        assert failed["status"] == "offline" and failed["error"] == error.to_dict()
        assert failed["retry_at"] == pytest.approx(parse_payload_time(error.timestamp) + 30)
        served.state.publish(SourceAvailability("radio", True))
        assert client.wait("source", 4)[3]["status"] == "error"  # back, but nothing classified yet
        publish(served, state("radio", "rock", 0.8, time.time()))  # a classification clears the error
        recovered = client.wait("source", 5)[4]
        assert recovered["status"] == "music" and recovered["error"] is None and recovered["retry_at"] is None

        # A folder: tagged files and a file that is not audio are listed; the folder itself is fine.
        good, unsure = tagged("inbox", "/music/a.flac", "jazz", 0.91), tagged("inbox", "/music/b.mp3", "pop", 0.4, "uncertain")
        bad = GenreEvent.error("inbox", "/music/cover.jpg: not an audio file (ffmpeg: Invalid data)", path="/music/cover.jpg")
        for event in (good, unsure, bad):
            publish(served, event)
        folder = client.wait("source", 8)[7]
        assert folder["source"] == "inbox" and folder["status"] == "watching" and folder["error"] is None
        assert folder["tracks"] == [good.to_dict(), unsure.to_dict(), bad.to_dict()]
        publish(served, GenreEvent.error("inbox", "cannot watch /music: permission denied"))  # the folder's own
        assert client.wait("source", 9)[8]["status"] == "error"
    finally:
        client.close()

    for i in range(RECENT_CHANGES + 5):  # the lists are bounded, newest kept
        served.state.publish(changed("radio", LABELS[i % 10], LABELS[(i + 1) % 10], now + i))
    changes = served.json("/api/sources")["sources"][0]["changes"]
    assert len(changes) == RECENT_CHANGES and changes[-1]["to"] == LABELS[(RECENT_CHANGES + 5) % 10]


def test_dashboard_sink_passes_availability_on(tmp_path):
    sink = DashboardSink(DashboardConfig(port=0), LABELS, "test-model")
    sink.publish(SourceAvailability("radio", True))  # a source thread may say so before the daemon lists it
    sink.sources_changed([info("radio", "stream"), info("tv", "stream")], "test-model")
    assert sink.state.sources()["sources"][0]["online"] is True
    sink.publish(state("radio", "rock", 0.9, time.time()))
    sink.publish(SourceAvailability("radio", False))
    radio, _ = sink.state.sources()["sources"]
    assert radio["status"] == "offline" and radio["online"] is False

    seen: list[dict] = []
    sink.state.subscribe(lambda kind, item: seen.append(item) if kind == "source" else None)
    sink.sources_changed([info("radio", "stream", hop=4.0)], "test-model")  # tv removed on reload...
    assert [(s["source"], s["stale_after"]) for s in seen] == [("radio", STALE_HOPS * 4.0)]  # open pages hear it
    sink.publish(SourceAvailability("tv", False))  # ...and its stopping thread says so afterwards
    sink.publish(SourceAvailability("radio", True))
    assert [s["source"] for s in seen] == ["radio", "radio"]
    assert [s["source"] for s in sink.state.sources()["sources"]] == ["radio"]


def test_live_health_tells_the_mqtt_connection_even_while_items_flow(served, monkeypatch):
    monkeypatch.setattr(server_module, "HEALTH_SECONDS", 0.2)
    connected = SinkMetrics(mqtt_connected=False)
    served.state.set_sink_metrics(lambda: connected)
    client = LiveClient(served.base)
    try:
        assert client.wait("hello")[0]["mqtt_connected"] is False
        assert client.wait("health")[0] == {"mqtt_connected": False}
        connected.mqtt_connected = True
        end = time.monotonic() + 1.0
        while time.monotonic() < end:  # states every 20 ms: the health still comes
            served.state.publish(state("radio", "rock", 0.9, time.time()))
            time.sleep(0.02)
        assert {"mqtt_connected": True} in client.wait("health", 3)
    finally:
        client.close()


def test_history_24h_7d_and_csv_export(served, monkeypatch):
    now = time.time()
    for ts, genre in [(now - 10 * 86400, "metal"), (now - 3 * 86400, "blues"), (now - 3 * 86400 + 5, "blues"),
                      (now - 5 * 3600, "jazz"), (now - 10, "rock")]:
        publish(served, state("radio", genre, 0.8, ts))
    publish(served, state("tv", "pop", 0.8, now - 10))
    served.history.close()  # flush the writer; the server reads the file

    def genres(since: str) -> list[str]:
        return [s["genre"] for s in served.json(f"/api/history?source=radio&since={since}")["items"]]

    assert genres("-1h") == ["rock"]
    assert genres("-24h") == ["jazz", "rock"]
    assert genres("-7d") == ["blues", "jazz", "rock"]

    status, headers, body = served.get("/api/history.csv?source=radio&since=-7d")
    assert status == 200 and headers["Content-Type"] == "text/csv; charset=utf-8"
    assert headers["Content-Disposition"].startswith('attachment; filename="genre-history-radio-')
    assert headers["Content-Disposition"].endswith('.csv"')
    assert headers["Content-Security-Policy"].startswith("default-src 'self'")
    rows = list(csv.DictReader(io.StringIO(body.decode())))
    assert [(r["genre"], r["windows"], r["state"]) for r in rows] == [("blues", "2", "music"), ("jazz", "1", "music"),
                                                                      ("rock", "1", "music")]
    items = json.loads(json.dumps(served.json("/api/history?source=radio&since=-7d")["items"]), parse_float=str, parse_int=str)
    assert rows == [{k: "" if v is None else v for k, v in item.items()} for item in items]  # the same segments, as text (null: empty)
    _, _, everything = served.get("/api/history.csv?since=-7d")
    assert {r["source"] for r in csv.DictReader(io.StringIO(everything.decode()))} == {"radio", "tv"}
    _, headers, _ = served.get("/api/history.csv?source=a%20b/c%22d&since=-7d")
    assert headers["Content-Disposition"].startswith('attachment; filename="genre-history-a_b_c_d-')

    # The row cap of /api/history holds for the export too: the newest segments are kept.
    monkeypatch.setattr(server_module, "MAX_HISTORY_ROWS", 2)
    assert genres("-7d") == ["jazz", "rock"]
    _, _, body = served.get("/api/history.csv?source=radio&since=-7d&limit=100")
    assert [r["genre"] for r in csv.DictReader(io.StringIO(body.decode()))] == ["jazz", "rock"]
    for query, why in [("kind=states", "segments only"), ("since=teatime", "not a time"), ("limit=0", "at least 1")]:
        status, _, body = served.get("/api/history.csv?" + query)
        assert status == 400 and why in json.loads(body)["error"], query


def test_spectrogram_axes_follow_the_frontend_mel_scale():
    axes = spectrogram_axes(FrontendConfig(), 647)
    assert axes["seconds"] == pytest.approx(647 * 1024 / 22050, abs=0.01)
    ticks = {t["hz"]: t["at"] for t in axes["freq_ticks"]}
    assert list(ticks) == [500, 1000, 2000, 4000, 8000]
    top = 15 + math.log(11025 / 1000) * 27 / math.log(6.4)  # Slaney: 15 mel at 1 kHz, logarithmic above
    assert ticks[1000] == pytest.approx(15 / top, abs=1e-4)
    assert ticks[500] == pytest.approx(ticks[1000] / 2, abs=1e-4)  # linear below 1 kHz
    assert ticks[8000] < 1
    narrow = spectrogram_axes(FrontendConfig(f_max=4000.0), 100)
    assert [t["hz"] for t in narrow["freq_ticks"]] == [500, 1000, 2000]  # only ticks inside the band


# -- a real browser -----------------------------------------------------------------------
def test_operator_page_in_a_real_browser(tmp_path):
    """Four sources as an operator sees them: live, offline with a folded error, stale, a folder."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait

    s = serve(tmp_path)
    driver = None
    try:
        now = time.time()
        s.state.set_sources([info("studio", "mic", 2.0), info("radio", "stream", 2.0), info("tv", "stream", 1.0),
                             info("inbox", "watch")])
        s.state.set_sink_metrics(lambda: SinkMetrics(mqtt_connected=True))
        for i in range(3):  # hours ago: only in the 24 h view
            s.history.publish(state("studio", "jazz", 0.7, now - 5 * 3600 + 2 * i))
        for i, genre in enumerate(["jazz", "jazz", "rock", "rock", "rock"]):
            publish(s, state("studio", genre, 0.78, now - 10 + 2 * i))
        s.history.close()  # flush: the page reads the history from the file
        s.state.publish(changed("studio", "jazz", "rock", now - 6))
        s.state.publish(state("radio", "rock", 0.78, now - 3))
        s.state.publish(state("tv", "pop", 0.9, now - 20))  # hop 1 s: long past STALE_HOPS hops
        for event in (tagged("inbox", "/music/new/a.flac", "jazz", 0.91),
                      tagged("inbox", "/music/new/b.mp3", "pop", 0.41, "uncertain"),
                      GenreEvent("track_tagged", "inbox", {"path": "/music/new/talk.ogg", "genre": None, "state": "not_music",
                                                           "confidence": 0.3, "probabilities": {"pop": 0.3}, "duration": 30.0,
                                                           "not_music": 0.97}),
                      GenreEvent.error("inbox", "/music/new/cover.jpg: not an audio file (ffmpeg: Invalid data "
                                                "found when processing input)", path="/music/new/cover.jpg")):
            s.state.publish(event)

        driver = chromium_driver(tmp_path)
        driver.set_window_size(1200, 2100)
        driver.get(s.server.url)
        wait = WebDriverWait(driver, 20, poll_frequency=0.1)
        studio = wait.until(lambda d: d.find_element(By.ID, "source-studio"))
        radio, tv, inbox = (driver.find_element(By.ID, f"source-{x}") for x in ("radio", "tv", "inbox"))
        ring = MelRingBuffer()
        ring.extend(np.random.default_rng(1).random((647, 128), dtype=np.float32) * 100)
        wait.until(lambda d: s.state.listener_count == 1)
        s.state.offer_mel("studio", ring)

        def text(el, css: str) -> str:
            return el.find_element(By.CSS_SELECTOR, css).get_attribute("textContent")

        # The live source: on air since the rock segment began, recent changes, level, axes, MQTT.
        wait.until(lambda d: "on air since" in text(studio, ".onair"))
        assert float(studio.find_element(By.CSS_SELECTOR, ".onair").get_attribute("data-since")) == pytest.approx(now - 6, abs=1)
        assert "jazz → rock" in text(studio, ".changes .recent li")
        s.state.observe_level("studio", -23.4, -60.0)  # the window's RMS level, with the silence threshold
        wait.until(lambda d: studio.find_element(By.CSS_SELECTOR, ".level").get_attribute("data-dbfs") == "-23.4")
        assert text(studio, ".level-db") == "−23 dBFS" and text(studio, ".level-threshold") == "silence < −60"
        assert [e.get_attribute("textContent") for e in studio.find_elements(By.CSS_SELECTOR, ".yaxis span")] == [
            "500 Hz", "1 kHz", "2 kHz", "4 kHz", "8 kHz"]
        xaxis = [e.get_attribute("textContent") for e in studio.find_elements(By.CSS_SELECTOR, ".xaxis span")]
        assert xaxis == ["−30 s", "−20 s", "−10 s", "now"]
        assert text(studio, ".age").startswith("last window")
        assert driver.find_element(By.ID, "mqtt").text == "MQTT connected"
        big = float(driver.execute_script("return parseFloat(getComputedStyle(arguments[0]).fontSize)",
                                          studio.find_element(By.CSS_SELECTOR, ".genre")))
        assert studio.get_attribute("data-status") == "music" and "down" not in studio.get_attribute("class")

        # The stream goes down: no "rock 78 %" in large type; the raw ffmpeg text stays folded.
        s.state.publish(SourceAvailability("radio", False))
        s.state.publish(GenreEvent.error("radio", RAW_FFMPEG))
        wait.until(lambda d: radio.get_attribute("data-status") == "offline")
        assert "down" in radio.get_attribute("class")
        genre = radio.find_element(By.CSS_SELECTOR, ".genre")
        small = float(driver.execute_script("return parseFloat(getComputedStyle(arguments[0]).fontSize)", genre))
        assert small < big * 0.6
        assert not radio.find_element(By.CSS_SELECTOR, ".confidence").is_displayed()
        assert radio.find_element(By.CSS_SELECTOR, ".lastheard").text.startswith("last heard")
        problem = radio.find_element(By.CSS_SELECTOR, ".problem")
        assert problem.is_displayed() and problem.get_attribute("open") is None
        summary = problem.find_element(By.CSS_SELECTOR, "summary").text
        assert summary == "stream http://radio.example/live dropped: connection refused"
        assert not radio.find_element(By.CSS_SELECTOR, ".problem-detail").is_displayed()
        assert "Connection to tcp" in text(radio, ".problem-detail")
        wait.until(lambda d: text(radio, ".retry").startswith("reconnecting in "))
        assert 25 <= int(text(radio, ".retry").split()[2]) <= 30

        # No window for more than STALE_HOPS hops: stale, shown like a dead source.
        wait.until(lambda d: tv.get_attribute("data-status") == "stale")
        assert "down" in tv.get_attribute("class") and text(tv, ".onair") == ""

        # The folder: its files listed, the uncertain one as such, the non-audio file skipped, fading,
        # and the folder itself not in an error state.
        rows = inbox.find_elements(By.CSS_SELECTOR, ".tracks .recent li")
        assert [r.get_attribute("data-state") for r in rows] == ["failed", "not_music", "uncertain", "music"]
        assert [[text(r, c) for c in (".file", ".verdict")] for r in rows] == [
            ["cover.jpg", "skipped: not an audio file"], ["talk.ogg", "not music"], ["b.mp3", "uncertain (pop?) 41 %"],
            ["a.flac", "jazz 91 %"]]
        assert driver.execute_script("return getComputedStyle(arguments[0]).animationName", rows[0]) == "fade"
        assert inbox.get_attribute("data-status") == "watching"
        assert not inbox.find_element(By.CSS_SELECTOR, ".problem").is_displayed()

        # 1 h -> 24 h: the hours-old windows join the timeline; the CSV link follows the range.
        timeline = studio.find_element(By.CSS_SELECTOR, ".timeline")
        assert int(timeline.get_attribute("data-windows")) == 5
        Select(driver.find_element(By.ID, "range")).select_by_value("24h")
        wait.until(lambda d: timeline.get_attribute("data-range") == "24h")
        assert int(timeline.get_attribute("data-windows")) == 8
        assert text(studio, ".axis").startswith("−24 h")
        assert studio.find_element(By.CSS_SELECTOR, ".csv").get_attribute("href").endswith(
            "api/history.csv?since=-24h&source=studio")
        ARTIFACTS.mkdir(exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "dashboard-operator.png"))
        assert (ARTIFACTS / "dashboard-operator.png").stat().st_size > 20_000
        assert not [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]  # no CSP or script errors
    finally:
        if driver is not None:
            driver.quit()
        s.server.stop()
        s.history.close()
