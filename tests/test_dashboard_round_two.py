"""What a user meets, round two: the level meter in dBFS with the silence threshold, the announced genre
with its own probability and the leading one, history segments that name their state, a 10 min range,
the last 30 s of a source to hear, the model and how it was chosen, minutes per genre per day.

The in-process server and Chromium first, then one daemon playing four files in real time and watching
a folder, driven through its HTTP API and a real browser (its screenshot is docs/dashboard.png).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import shutil
import subprocess
import sys
import time
import wave
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from _helpers_dashboard import ARTIFACTS, LABELS, state
from conftest import REPO, cli_env, free_port, run_cli, shared_path
from dashboards import LiveClient, publish, serve
from test_dashboard import TOKEN, chromium_driver, wait_healthy
from test_robust_dashboard import request

from genre_stream.audio.frontend import SAMPLE_RATE
from genre_stream.config import DashboardConfig
from genre_stream.dashboard.recent_audio import RECENT_SECONDS, RecentAudio
from genre_stream.dashboard.sink import DashboardSink
from genre_stream.history.reader import HistoryReader, daily_minutes
from genre_stream.live.pipeline import ClassifiedWindow
from genre_stream.sinks import SourceInfo
from genre_stream.sinks.history import History, HistoryConfig
from genre_stream.sinks.messages import GenreState, State, iso_utc

TONE_HZ = 440.0
TONE_AMPLITUDE = 0.5  # a sine's RMS is amplitude / sqrt(2): -9.03 dBFS
TONE_DBFS = 20 * math.log10(TONE_AMPLITUDE / math.sqrt(2))


def tone(hz: float, seconds: float, amplitude: float = TONE_AMPLITUDE) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def read_wav(body: bytes) -> tuple[int, np.ndarray]:
    with wave.open(io.BytesIO(body)) as w:
        assert (w.getnchannels(), w.getsampwidth()) == (1, 2)  # mono, 16-bit
        return w.getframerate(), np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64) / 32767


def dominant_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size)))
    return float(np.fft.rfftfreq(samples.size, 1 / rate)[int(np.argmax(spectrum))])


def band_share(samples: np.ndarray, rate: int, hz: float) -> float:
    """The share of the signal's energy within 5 Hz of ``hz``."""
    power = np.abs(np.fft.rfft(samples)) ** 2
    freqs = np.fft.rfftfreq(samples.size, 1 / rate)
    return float(power[np.abs(freqs - hz) < 5].sum() / power.sum())


def music(source: str, genre: str, own: float, ts: float, leading: str | None = None, lead: float | None = None):
    """A music state whose announced ``genre`` has probability ``own`` and ``leading`` (if any) ``lead``."""
    probs = {label: 0.0 for label in LABELS}
    probs[genre] = own
    if leading:
        probs[leading] = lead
    rest = (1 - sum(probs.values())) / (len(LABELS) - (2 if leading else 1))
    probs = {k: (v if v else rest) for k, v in probs.items()}
    return GenreState(source, genre, own, probs, State.MUSIC, 0.0, 30.0, "test-model", leading=leading,
                      leading_confidence=lead, timestamp=iso_utc(ts))


# -- 4: the last 30 s, kept bounded, served as WAV ----------------------------------------------
def test_recent_audio_keeps_the_last_30_s_and_serves_it_as_wav(tmp_path):
    """45 s through the dashboard sink (15 s at 330 Hz, then 30 s at 440 Hz): the WAV holds exactly the last
    30 s at the pipeline's rate, so 440 Hz and nothing of the 330 Hz part; the API's auth and Host rules hold."""
    sink = DashboardSink(DashboardConfig(port=0, token=TOKEN), LABELS, "test-model")
    sink.start()
    try:
        sink.sources_changed([SourceInfo("radio", "stream", tuple(LABELS), 2.0, 0.0),
                              SourceInfo("inbox", "watch", tuple(LABELS), 2.0, 0.0)], "test-model")
        audio = np.concatenate([tone(330.0, 15.0), tone(TONE_HZ, 30.0)])
        chunk = 2205  # 0.1 s, as a file source sends them
        for i in range(0, audio.size, chunk):
            sink.audio_received("radio", audio[i:i + chunk])
        port = sink.server.port
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        status, headers, body = request(port, "/api/sources/radio/recent.wav", headers=bearer)
        assert status == 200 and headers["Content-Type"] == "audio/wav", body[:200]
        assert headers["Cache-Control"] == "no-store" and headers["Content-Security-Policy"].startswith("default-src")
        rate, samples = read_wav(body)
        assert rate == SAMPLE_RATE and samples.size == int(RECENT_SECONDS * SAMPLE_RATE)  # 30.0 s, no more
        assert float(headers["X-Audio-Seconds"]) == pytest.approx(RECENT_SECONDS)
        assert dominant_hz(samples, rate) == pytest.approx(TONE_HZ, abs=1)
        assert band_share(samples, rate, 330.0) < 1e-4  # the first 15 s are gone
        assert np.sqrt(np.mean(samples ** 2)) == pytest.approx(TONE_AMPLITUDE / math.sqrt(2), rel=1e-3)
        # the ring wraps mid-chunk: the samples are the input's last 30 s in order (to 16-bit precision)
        assert np.max(np.abs(samples - audio[-samples.size:])) < 1.5 / 32767

        assert request(port, "/api/sources/radio/recent.wav")[0] == 401  # the token, as for every API route
        assert request(port, "/api/sources/radio/recent.wav", host="evil.example", headers=bearer)[0] == 403
        for source in ("tv", "inbox"):  # unknown; a folder (its files are not kept)
            status, _, body = request(port, f"/api/sources/{source}/recent.wav", headers=bearer)
            assert status == 404 and "no audio from source" in json.loads(body)["error"]
        sink.sources_changed([SourceInfo("inbox", "watch", tuple(LABELS), 2.0, 0.0)], "test-model")  # radio removed
        assert request(port, "/api/sources/radio/recent.wav", headers=bearer)[0] == 404
    finally:
        sink.close(2.0)


def test_recent_audio_is_bounded_and_clips():
    ring = RecentAudio(SAMPLE_RATE, seconds=1.0)
    assert ring.latest("radio") is None
    ring.add("radio", np.full(SAMPLE_RATE * 3, 2.0, np.float32))  # one chunk longer than the ring, out of range
    samples, _ = ring.latest("radio")
    assert samples.size == SAMPLE_RATE and samples.dtype == np.int16 and samples.max() == 32767
    ring.add("radio", np.full(100, -1.0, np.float32))
    samples, _ = ring.latest("radio")
    assert samples.size == SAMPLE_RATE and list(samples[-101:]) == [32767] + [-32767] * 100


# -- 1 and 4 at the source: what the pipeline tells its listeners -------------------------------------
class WindowsOnly:
    """A listener written before ``audio_received`` existed: it hears no audio, and nothing fails."""

    def __init__(self) -> None:
        self.windows: list[ClassifiedWindow] = []

    def mel_updated(self, source: str, ring) -> None:
        pass

    def window_classified(self, window: ClassifiedWindow) -> None:
        self.windows.append(window)


def test_pipeline_gives_listeners_the_audio_and_each_windows_level(engine, caplog):
    from genre_stream.config import PipelineConfig
    from genre_stream.live.pipeline import SourcePipeline
    from genre_stream.sources.base import AudioChunk

    sink = DashboardSink(DashboardConfig(port=0), LABELS, "test-model")  # not started: only its listener side
    plain = WindowsOnly()
    pipeline = SourcePipeline("radio", engine, PipelineConfig(hop_seconds=2.0, min_fill_seconds=4.0, silence_dbfs=-50.0),
                              listeners=[plain, sink])
    audio = np.concatenate([np.zeros(5 * SAMPLE_RATE, np.float32), tone(TONE_HZ, 10.0)])
    levels = []
    for i in range(0, audio.size, 2205):
        before = len(plain.windows)
        pipeline.feed(AudioChunk("radio", audio[i:i + 2205], i / SAMPLE_RATE, time.monotonic()))
        if len(plain.windows) > before:  # the level the window was judged by is the pipeline's at that moment
            levels.append(pipeline.level_dbfs())
    assert "listener" not in caplog.text  # the plain listener was not asked for audio
    assert [w.level_dbfs for w in plain.windows] == levels and len(levels) >= 5
    assert {w.silence_dbfs for w in plain.windows} == {-50.0}
    assert levels[0] == -math.inf and -50 < levels[-1] < TONE_DBFS  # zeros, then the tone fills the window
    assert [m.state for m in plain.windows[0].messages] == ["silence"]
    assert sink.state.sources()["levels"] == {}  # no source listed yet; the level is kept for when it is
    sink.sources_changed([SourceInfo("radio", "file", tuple(LABELS), 2.0, 0.0)], "test-model")
    assert sink.state.sources()["levels"]["radio"]["level_dbfs"] == round(levels[-1], 1)
    recent, _ = sink.state.recent_audio.latest("radio")
    assert recent.size == audio.size and np.max(np.abs(recent / 32767 - audio)) < 1e-4  # every sample, in order


# -- 1 and 5: the level in dBFS with the threshold, the model and how it was chosen ----------------
def test_level_items_carry_the_window_level_and_the_threshold(tmp_path):
    sink = DashboardSink(DashboardConfig(port=0), LABELS, "test-model", precision="int8",
                         chosen="auto -> int8 (CPU; why)")
    sink.start()
    try:
        sink.sources_changed([SourceInfo("radio", "stream", tuple(LABELS), 2.0, 0.0)], "test-model")
        client = LiveClient(sink.server.url.rstrip("/"))
        try:
            hello = client.wait("hello")[0]
            assert (hello["precision"], hello["chosen"], hello["levels"]) == ("int8", "auto -> int8 (CPU; why)", {})
            now = time.time()
            sink.window_classified(ClassifiedWindow("radio", (state("radio", "rock", 0.8, now),), 0.01, -23.456, -60.0))
            sink.window_classified(ClassifiedWindow("radio", (state("radio", None, 0.0, now, "silence"),), None,
                                                    -math.inf, -60.0))  # digital silence
            sink.window_classified(ClassifiedWindow("radio", (), 0.01))  # a listener-made window without a level
            first, second = client.wait("level", 2)
            assert first == {"source": "radio", "level_dbfs": -23.5, "silence_dbfs": -60.0, "floor_dbfs": -120.0}
            assert second["level_dbfs"] == -120.0
            time.sleep(0.2)
            assert len(client.wait("level")) == 2
        finally:
            client.close()
        assert sink.state.sources()["levels"]["radio"]["level_dbfs"] == -120.0
    finally:
        sink.close(2.0)


# -- 2: history segments name their state -------------------------------------------------------------
def seed_non_music(history: History, source: str, t0: float) -> None:
    """rock, then uncertain (best guesses classical, jazz), not music, silence, rock again: 5 s apart."""
    rows = [("rock", 0.8, State.MUSIC), ("rock", 0.7, State.MUSIC), ("classical", 0.31, State.UNCERTAIN),
            ("jazz", 0.33, State.UNCERTAIN), (None, 0.0, State.NOT_MUSIC), (None, 0.0, State.SILENCE),
            ("rock", 0.9, State.MUSIC)]
    for i, (genre, conf, kind) in enumerate(rows):
        ts = t0 + 5 * i
        if kind is State.MUSIC:
            history.publish(state(source, genre, conf, ts))
        else:
            history.publish(GenreState(source, genre, conf, {}, kind, 0.0, 30.0, "test-model", timestamp=iso_utc(ts)))


def test_history_segments_name_their_state_and_give_confidence_only_for_music(served, tmp_path):
    t0 = time.time() - 600
    seed_non_music(served.history, "radio", t0)
    served.history.close()
    expected = [("music", "rock", 0.75), ("uncertain", None, None), ("not_music", None, None),
                ("silence", None, None), ("music", "rock", 0.9)]
    items = served.json("/api/history?source=radio&since=-1h")["items"]
    assert [(i["state"], i["genre"], i["confidence"]) for i in items] == expected
    _, _, body = served.get("/api/history.csv?source=radio&since=-1h")
    rows = list(csv.DictReader(io.StringIO(body.decode())))
    assert [(r["state"], r["genre"], r["confidence"]) for r in rows] == [
        (s, g or "", "" if c is None else str(c)) for s, g, c in expected]
    # The dataclass still records what was stored (the uncertain segment's first best guess), for code.
    segments = HistoryReader(served.history.config.path).segments("radio")
    assert (segments[1].state, segments[1].genre, segments[1].is_music) == ("uncertain", "classical", False)
    # The CLI: the state in brackets and no confidence in the table; null in JSON.
    state_dir = served.history.config.path.parent
    proc = run_cli("history", "--state-dir", str(state_dir), "--since", "-1h", "--format", "json", timeout=60)
    assert [(r["state"], r["genre"], r["confidence"]) for r in json.loads(proc.stdout)] == expected
    table = run_cli("history", "--state-dir", str(state_dir), "--since", "-1h", timeout=60).stdout.splitlines()
    assert [line.split()[-2:] for line in table[1:]] == [["rock", "0.75"], ["(uncertain)", "-"], ["(not_music)", "-"],
                                                         ["(silence)", "-"], ["rock", "0.90"]]


# -- 6: minutes per genre per day -------------------------------------------------------------------
def at(day: date, hour: int, minute: int = 0, second: int = 0) -> float:
    return datetime.combine(day, datetime.min.time()).replace(hour=hour, minute=minute, second=second).timestamp()


def seed_days(history: History, source: str, today: date) -> None:
    """Yesterday 10:00-10:20 jazz then 10 min of not music; blues from 23:50 the day before to 00:10
    yesterday (10 min on each day); 3 days ago 5 min uncertain. States every 30 s."""
    yesterday, before, older = (today - timedelta(days=n) for n in (1, 2, 3))
    for i in range(40):
        history.publish(state(source, "jazz", 0.8, at(yesterday, 10) + 30 * i))
    for i in range(20):
        history.publish(state(source, None, 0.0, at(yesterday, 10, 20) + 30 * i, "not_music"))
    for i in range(41):
        history.publish(state(source, "blues", 0.7, at(before, 23, 50) + 30 * i))
    for i in range(10):
        history.publish(GenreState(source, "classical", 0.3, {}, State.UNCERTAIN, 0, 30, "m",
                                   timestamp=iso_utc(at(older, 12) + 30 * i)))


def expected_days(today: date) -> dict[str, dict[str, float]]:
    return {(today - timedelta(days=1)).isoformat(): {"jazz": 20.0, "blues": 10.0},
            (today - timedelta(days=2)).isoformat(): {"blues": 10.0},
            (today - timedelta(days=3)).isoformat(): {}}


def test_daily_minutes_split_at_local_midnight(served):
    today = date.today()
    seed_days(served.history, "radio", today)
    publish(served, state("tv", "rock", 0.9, at(today - timedelta(days=1), 9)))
    publish(served, state("tv", "rock", 0.9, at(today - timedelta(days=1), 9, 1)))
    served.history.close()
    doc = served.json("/api/history/daily?source=radio")
    assert [d["date"] for d in doc["days"]] == [(today - timedelta(days=n)).isoformat() for n in range(6, -1, -1)]
    by_date = {d["date"]: d for d in doc["days"]}
    for day, minutes in expected_days(today).items():
        assert by_date[day]["minutes"] == minutes and by_date[day]["total"] == sum(minutes.values())
    assert list(by_date[(today - timedelta(days=1)).isoformat()]["minutes"]) == ["jazz", "blues"]  # most first
    everything = served.json("/api/history/daily?days=3")["days"]
    assert len(everything) == 3 and everything[1]["minutes"] == {"jazz": 20.0, "blues": 10.0, "rock": 1.0}
    for query, why in [("days=0", "days='0'"), ("days=32", "from 1 to 31"), ("days=x", "whole number"),
                       ("source=" + "x" * 201, "not a source id")]:
        status, _, body = served.get("/api/history/daily?" + query)
        assert status == 400 and why in json.loads(body)["error"], query
    # the function itself: a segment over two midnights, and nothing outside the days asked
    from genre_stream.history.reader import Segment
    long = Segment("radio", at(today - timedelta(days=2), 23), at(today, 1), "music", "rock", 0.8, 10)
    got = daily_minutes([long], today - timedelta(days=1), 2)
    assert [d["minutes"] for d in got] == [{"rock": 24 * 60.0}, {"rock": 60.0}]


# -- 2, 3 in a browser: the coherent pair, state words in the timeline, 10 min -------------------------
def test_page_shows_the_announced_genre_with_the_leading_one_and_segments_by_state(tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait

    s = serve(tmp_path)
    driver = None
    try:
        now = time.time()
        s.state.set_sources([SourceInfo("radio", "stream", tuple(LABELS), 2.0, 0.0)])
        for i in range(3):  # 30 min ago: in the 1 h view, not in the 10 min one
            s.history.publish(state("radio", "metal", 0.8, now - 1800 + 5 * i))
        seed_non_music(s.history, "radio", now - 300)
        s.history.close()
        driver = chromium_driver(tmp_path)
        driver.get(s.server.url)
        wait = WebDriverWait(driver, 20, poll_frequency=0.1)
        radio = wait.until(lambda d: d.find_element(By.ID, "source-radio"))
        wait.until(lambda d: s.state.listener_count == 1)

        def text(css: str, el=radio) -> str:
            return el.find_element(By.CSS_SELECTOR, css).get_attribute("textContent")

        # The hysteresis holds metal while jazz leads: metal with its own probability, and why the bars differ.
        s.state.publish(music("radio", "metal", 0.03, time.time(), leading="jazz", lead=0.72))
        wait.until(lambda d: text(".genre") == "metal")
        assert text(".confidence") == "3 %"
        leading = radio.find_element(By.CSS_SELECTOR, ".leading")
        assert leading.is_displayed() and leading.text == "leading: jazz 72 %"
        assert text('.bar[data-label="metal"] .pct') == "3.0%" and text('.bar[data-label="jazz"] .pct') == "72.0%"
        assert "announced" in radio.find_element(By.CSS_SELECTOR, '.bar[data-label="metal"]').get_attribute("class")
        assert "leading" in radio.find_element(By.CSS_SELECTOR, '.bar[data-label="jazz"]').get_attribute("class")
        # Announced and leading agree again: no "leading" line, no marked bar.
        s.state.publish(music("radio", "jazz", 0.75, time.time()))
        wait.until(lambda d: text(".genre") == "jazz")
        assert text(".confidence") == "75 %" and not leading.is_displayed()
        assert not radio.find_elements(By.CSS_SELECTOR, ".bar.leading")
        # Not music: the state word, no percentage, no leader.
        s.state.publish(GenreState("radio", None, 0.0, {}, State.NOT_MUSIC, 0, 30, "test-model"))
        wait.until(lambda d: text(".genre") == "not music")
        assert text(".confidence") == "" and not leading.is_displayed()

        # The timeline (history and live): a state without a genre is named by its state, never "classical, 0 %".
        segs = radio.find_elements(By.CSS_SELECTOR, ".timeline .seg")
        titles = [seg.get_attribute("title").split(",")[0] for seg in segs]
        assert titles[:6] == ["metal 80 %", "rock 75 %", "uncertain", "not music", "silence", "rock 90 %"], titles
        assert titles[-1] == "not music"  # the live state
        assert not any("classical" in t for t in titles)
        legend = [e.get_attribute("textContent") for e in radio.find_elements(By.CSS_SELECTOR, ".legend span")]
        assert "classical" not in legend and {"uncertain", "not music", "silence"} <= set(legend)

        # 10 min: the shortest range; the metal of 30 min ago leaves the timeline, the CSV link follows.
        timeline = radio.find_element(By.CSS_SELECTOR, ".timeline")
        windows_1h = int(timeline.get_attribute("data-windows"))
        Select(driver.find_element(By.ID, "range")).select_by_visible_text("10 min")
        wait.until(lambda d: timeline.get_attribute("data-range") == "10m")
        assert int(timeline.get_attribute("data-windows")) == windows_1h - 3
        assert text(".axis").startswith("−10 min")
        assert radio.find_element(By.CSS_SELECTOR, ".csv").get_attribute("href").endswith("since=-10m&source=radio")
        assert [o.text for o in Select(driver.find_element(By.ID, "range")).options] == ["10 min", "1 h", "24 h", "7 d"]
        # the header: model, precision (the served state says int8), chosen absent here
        assert driver.find_element(By.ID, "model").text == "test-model"
        assert driver.find_element(By.ID, "precision").text == "int8"
        assert not [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        if driver is not None:
            driver.quit()
        s.server.stop()
        s.history.close()


# -- everything with a real daemon, in a real browser ------------------------------------------------
def clip(tmp_path: Path, relative: str, name: str, seconds: float = 30.0) -> Path:
    import soundfile as sf

    audio, sr = sf.read(shared_path(relative), dtype="float32", always_2d=True)
    out = tmp_path / name
    sf.write(out, audio[: int(seconds * sr)].mean(axis=1), sr)
    return out


def test_a_daemon_with_several_sources_in_a_real_browser(tmp_path):
    """Four files in real time and a watched folder: the level meter reads the tone's RMS in dBFS with the
    configured threshold marked, the tone's last seconds come back as WAV and play in the page, the header
    names the model as the daemon logged it, and music per day adds the history's past days to today's."""
    import soundfile as sf
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait

    files = tmp_path / "files"
    files.mkdir()
    sources = {"country": clip(files, "audio/gtzan-country.00000.wav", "country.wav"),
               "jazz": clip(files, "audio/genre-dev/dev-010.flac", "jazz.wav"),
               "reggae": clip(files, "audio/genre-dev/dev-020.flac", "reggae.wav")}
    sources["tone"] = files / "tone.wav"
    sf.write(sources["tone"], tone(TONE_HZ, 30.0), SAMPLE_RATE)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for name, relative in (("rock.flac", "audio/genre-dev/dev-003.flac"), ("classical.flac", "audio/genre-dev/dev-001.flac")):
        shutil.copy(shared_path(relative), inbox / name)
    state_dir = tmp_path / "state"
    today = date.today()
    history = History(HistoryConfig.in_state_dir(state_dir, retention_days=0))
    history.start()
    seed_days(history, "country", today)  # the past days of "music per day"
    history.close()

    port = free_port()
    cmd = [sys.executable, "-m", "genre_stream", "run", "--realtime", "--hop", "2", "--min-fill", "4",
           "--stats-interval", "0", "--threads", "1", "--state-dir", str(state_dir), "--http", f"127.0.0.1:{port}",
           "--silence-dbfs", "-45"]
    for name in ("country", "jazz"):
        cmd += ["--source", f"{name}=file:{sources[name]}"]
    cmd += ["--source", f"inbox=watch:{inbox}"]
    for name in ("reggae", "tone"):
        cmd += ["--source", f"{name}=file:{sources[name]}"]
    daemon = subprocess.Popen(cmd, cwd=REPO, env=cli_env({"GENRE_STREAM_HTTP_TOKEN": TOKEN}),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    driver = None
    chosen = None
    try:
        wait_healthy(port, daemon)
        driver = chromium_driver(tmp_path)
        driver.set_window_size(1400, 1000)
        inner = driver.execute_script("return [window.innerWidth, window.innerHeight]")
        driver.set_window_size(2800 - inner[0], 2000 - inner[1])  # a 1400 x 1000 page
        driver.get(f"http://127.0.0.1:{port}/?token={TOKEN}")
        wait = WebDriverWait(driver, 60, poll_frequency=0.2)
        cards = {name: wait.until(lambda d, n=name: d.find_element(By.ID, f"source-{n}"))
                 for name in ("country", "jazz", "inbox", "reggae", "tone")}

        def text(el, css: str) -> str:
            return el.find_element(By.CSS_SELECTOR, css).get_attribute("textContent")

        # 1: the tone's window level, RMS in dBFS as pipeline.silence_dbfs means it, and the threshold marked
        tone_card = cards["tone"]
        level = tone_card.find_element(By.CSS_SELECTOR, ".level")
        wait.until(lambda d: level.get_attribute("data-dbfs"))
        assert float(level.get_attribute("data-dbfs")) == pytest.approx(TONE_DBFS, abs=0.15)
        assert text(tone_card, ".level-db") == "−9 dBFS"
        mark = tone_card.find_element(By.CSS_SELECTOR, ".level-mark")
        assert float(mark.get_attribute("data-dbfs")) == -45 and text(tone_card, ".level-threshold") == "silence < −45"
        fill = tone_card.find_element(By.CSS_SELECTOR, ".level-fill")
        width = float(driver.execute_script("return arguments[0].style.width", fill).rstrip("%"))
        assert width == pytest.approx((TONE_DBFS + 90) / 90 * 100, abs=0.5)  # the bar's scale: -90 .. 0 dBFS
        assert float(driver.execute_script("return arguments[0].style.left", mark).rstrip("%")) == pytest.approx(50)
        assert "below" not in fill.get_attribute("class")
        for name in ("country", "jazz", "reggae"):  # real music: a level in dBFS, above the threshold
            wait.until(lambda d, n=name: cards[n].find_element(By.CSS_SELECTOR, ".level").get_attribute("data-dbfs"))
            assert -45 < float(cards[name].find_element(By.CSS_SELECTOR, ".level").get_attribute("data-dbfs")) < 0

        # 5: the model as the daemon runs it: id, precision and how it was chosen
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        doc = json.loads(request(port, "/api/sources", headers=bearer)[2])
        assert driver.find_element(By.ID, "model").text == doc["model"]
        assert driver.find_element(By.ID, "precision").text == doc["precision"] in ("fp32", "int8")
        chosen = driver.find_element(By.ID, "chosen").get_attribute("textContent")
        assert chosen == doc["chosen"] and chosen.startswith(f"auto -> {doc['precision']} (")

        # 4: the tone's recent audio over the API, then played in the page
        status, headers, body = request(port, "/api/sources/tone/recent.wav", headers=bearer)
        assert status == 200 and headers["Content-Type"] == "audio/wav"
        rate, samples = read_wav(body)
        assert rate == SAMPLE_RATE and 4.0 <= samples.size / rate <= RECENT_SECONDS  # what exists so far, at most 30 s
        assert dominant_hz(samples, rate) == pytest.approx(TONE_HZ, abs=1)
        assert 20 * math.log10(np.sqrt(np.mean(samples ** 2))) == pytest.approx(TONE_DBFS, abs=0.1)
        assert request(port, "/api/sources/tone/recent.wav")[0] == 401
        assert request(port, "/api/sources/tone/recent.wav", host="rebind.example", headers=bearer)[0] == 403
        assert request(port, "/api/sources/inbox/recent.wav", headers=bearer)[0] == 404
        assert not cards["inbox"].find_element(By.CSS_SELECTOR, ".play").is_displayed()  # a folder: nothing to hear
        tone_card.find_element(By.CSS_SELECTOR, ".play").click()
        audio = tone_card.find_element(By.CSS_SELECTOR, "audio")
        wait.until(lambda d: int(audio.get_attribute("readyState") or 0) >= 1)  # the WAV's header was read
        assert f"127.0.0.1:{port}/api/sources/tone/recent.wav?at=" in audio.get_attribute("src")
        assert driver.execute_script("return arguments[0].error", audio) is None
        duration = float(audio.get_attribute("duration"))
        assert samples.size / rate - 0.5 <= duration <= RECENT_SECONDS + 0.01
        assert float(tone_card.get_attribute("data-audio-seconds")) == pytest.approx(duration, abs=0.01)

        # 6: music per day, from the daemon's own history: the seeded days and today's music from this run
        def daily() -> dict[str, dict]:
            return {d["date"]: d for d in json.loads(request(port, "/api/history/daily", headers=bearer)[2])["days"]}

        days = daily()
        for day, minutes in expected_days(today).items():
            assert days[day]["minutes"] == minutes
        wait.until(lambda d: daily()[today.isoformat()]["total"] > 0)  # two music states of a source make a segment
        assert set(daily()[today.isoformat()]["minutes"]) <= set(doc["labels"])
        driver.execute_script("loadDaily()")  # as the page does every minute
        wait.until(lambda d: float(d.find_element(By.CSS_SELECTOR, "#daily-table tbody tr").get_attribute("data-total")) > 0)
        rows = driver.find_elements(By.CSS_SELECTOR, "#daily-table tbody tr")
        assert [r.get_attribute("data-date") for r in rows] == [(today - timedelta(days=n)).isoformat() for n in range(7)]
        yesterday = rows[1]
        assert float(yesterday.get_attribute("data-total")) == 30.0 and text(yesterday, ".total") == "30 min"
        parts = {p.get_attribute("data-genre"): float(p.get_attribute("data-minutes"))
                 for p in yesterday.find_elements(By.CSS_SELECTOR, ".part")}
        assert parts == {"jazz": 20.0, "blues": 10.0}

        # the watched folder's files and each live source's genre; 20 s in, the screenshot of docs/dashboard.png
        wait.until(lambda d: len(cards["inbox"].find_elements(By.CSS_SELECTOR, ".tracks .recent li")) == 2)
        for name in ("country", "jazz", "reggae"):
            wait.until(lambda d, n=name: cards[n].find_element(By.CSS_SELECTOR, ".timeline").get_attribute("data-windows") not in ("0", None))
        Select(driver.find_element(By.ID, "range")).select_by_value("10m")
        canvas = cards["country"].find_element(By.CSS_SELECTOR, "canvas")
        wait.until(lambda d: int(canvas.get_attribute("data-total") or 0) >= 430)  # 20 s of the spectrogram
        assert not {cards[n].get_attribute("data-status") for n in ("country", "jazz", "reggae")} & {
            "offline", "stale", "error", "waiting"}  # all three on air
        driver.execute_script("window.scrollTo(0, 0)")
        ARTIFACTS.mkdir(exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "dashboard-sources.png"))
        assert (ARTIFACTS / "dashboard-sources.png").stat().st_size > 50_000
        assert not [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        if driver is not None:
            driver.quit()
        if daemon.poll() is None:
            daemon.terminate()
        stderr = daemon.communicate(timeout=30)[1]
    # the daemon's start line names the same choice the page showed
    assert re.search(re.escape(f"[{chosen}]"), stderr), stderr[-2000:]
