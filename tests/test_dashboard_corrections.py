"""Corrections from the dashboard (issue 11): "this file was jazz" goes into the library database
that `genre-trainer finetune --library` learns from, only for files the page lists, with clear
refusals; over real HTTP and SQLite, in a real browser, and wired by a real daemon."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from _helpers_dashboard import LABELS
from conftest import REPO, cli_env, free_port, wait_until
from dashboards import LiveClient
from test_dashboard import chromium_driver, wait_healthy
from test_dashboard_operator import info, tagged

from genre_stream.config import DashboardConfig
from genre_stream.dashboard.corrections import Corrections
from genre_stream.dashboard.server import DashboardServer
from genre_stream.dashboard.state import DashboardState
from genre_stream.library.db import LibraryDB
from genre_stream.library.labels import user_labels

TOKEN = "corrections-token"


def post(base: str, body: object, token: str | None = TOKEN, content_type: str = "application/json") -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(base + "/api/label", data=data, method="POST", headers={"Content-Type": content_type})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        raw = e.read()
        return e.code, json.loads(raw) if raw.startswith(b"{") else {"text": raw.decode()}


def labels_in(db_path: Path) -> list[tuple[str, str, str]]:
    if not db_path.exists():
        return []
    with LibraryDB(db_path) as db:
        return [(label.path, label.genre, label.origin) for label in user_labels(db)]


@pytest.fixture
def corrections_server(tmp_path):
    """A dashboard with corrections into ``tmp_path/library.db``, one folder source that tagged two files."""
    files = []
    for name in ("a.wav", "b.wav"):
        path = tmp_path / "music" / name
        path.parent.mkdir(exist_ok=True)
        sf.write(path, np.zeros(2205, dtype=np.float32), 22050)
        files.append(path)
    db_path = tmp_path / "library.db"
    state = DashboardState(LABELS, "test-model", mel_interval_seconds=0.05)
    state.set_sources([info("inbox", "watch")])
    server = DashboardServer(DashboardConfig(port=0, token=TOKEN), state, None, Corrections(db_path, LABELS))
    server.start()
    for path, genre in zip(files, ("jazz", "pop")):
        state.publish(tagged("inbox", str(path), genre, 0.9))
    yield server, state, files, db_path
    server.stop()


def test_a_listed_file_is_labelled_in_the_library_and_every_page_hears_it(corrections_server):
    server, state, (a, b), db_path = corrections_server
    base = server.url.rstrip("/")
    live = LiveClient(base, f"/api/live?token={TOKEN}")
    try:
        hello = live.wait("hello")[0]
        assert hello["corrections"] is True
        status, body = post(base, {"source": "inbox", "path": str(a), "genre": "blues"})
        assert status == 200, body
        assert body["path"] == str(a) and body["genre"] == "blues" and body["origin"] == "dashboard"
        assert labels_in(db_path) == [(str(a), "blues", "dashboard")]
        # Every open page redraws the source with the user's genre next to the file.
        item = next(p for p in live.wait("source") if p["corrected"])
        assert item["source"] == "inbox" and item["corrected"] == {str(a): "blues"}
        # A second correction replaces the first (the label table is keyed by path).
        assert post(base, {"source": "inbox", "path": str(a), "genre": "rock"})[0] == 200
        assert labels_in(db_path) == [(str(a), "rock", "dashboard")]
        assert state.sources()["sources"][0]["corrected"] == {str(a): "rock"}
    finally:
        live.close()


@pytest.mark.parametrize("body, status, message", [
    ({"source": "inbox", "path": "/etc/passwd", "genre": "jazz"}, 404, "is not a file that source 'inbox' tagged"),
    ({"source": "other", "path": "A", "genre": "jazz"}, 404, "is not a file that source 'other' tagged"),
    ({"source": "inbox", "path": "A", "genre": "polka"}, 400, "unknown genre 'polka'"),
    ({"source": "inbox", "path": "A"}, 400, "missing or not a string: genre"),
    (["inbox", "A", "jazz"], 400, "expected an object"),
])
def test_refusals_name_the_value_and_write_nothing(corrections_server, body, status, message):
    server, _, (a, _), db_path = corrections_server
    if isinstance(body, dict) and body.get("path") == "A":
        body["path"] = str(a)
    got, answer = post(server.url.rstrip("/"), body)
    assert got == status and message in answer["error"], answer
    assert labels_in(db_path) == []


def test_only_an_authorised_json_request_can_label(corrections_server):
    server, _, (a, _), db_path = corrections_server
    base = server.url.rstrip("/")
    body = {"source": "inbox", "path": str(a), "genre": "jazz"}
    assert post(base, body, token=None)[0] == 401
    # What a cross-site HTML form could send: refused, so a page elsewhere cannot write labels.
    form = f"source=inbox&path={a}&genre=jazz".encode()
    status, answer = post(base, form, content_type="application/x-www-form-urlencoded")
    assert status == 415 and "application/json" in answer["error"]
    assert post(base, b"{not json")[0] == 400
    assert labels_in(db_path) == []


def test_a_file_that_vanished_since_it_was_tagged_is_refused_with_its_name(corrections_server):
    server, _, (_, b), db_path = corrections_server
    b.unlink()
    status, answer = post(server.url.rstrip("/"), {"source": "inbox", "path": str(b), "genre": "jazz"})
    assert status == 422 and str(b) in answer["error"] and "no such file" in answer["error"]
    assert labels_in(db_path) == []


def test_without_a_library_database_corrections_are_off(tmp_path):
    state = DashboardState(LABELS, "test-model")
    server = DashboardServer(DashboardConfig(port=0), state)
    server.start()
    try:
        assert state.sources()["corrections"] is False
        status, answer = post(server.url.rstrip("/"), {"source": "inbox", "path": "/x.wav", "genre": "jazz"}, token=None)
        assert status == 409 and "watch.library_db" in answer["error"]
    finally:
        server.stop()


def test_correcting_a_file_in_a_real_browser(corrections_server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait

    server, state, (a, b), db_path = corrections_server
    driver = chromium_driver(tmp_path)
    try:
        driver.get(f"{server.url}?token={TOKEN}")
        wait = WebDriverWait(driver, 20, poll_frequency=0.1)
        inbox = wait.until(lambda d: d.find_element(By.ID, "source-inbox"))
        rows = wait.until(lambda d: inbox.find_elements(By.CSS_SELECTOR, ".tracks .recent li"))
        assert [r.find_element(By.CSS_SELECTOR, ".file").text for r in rows] == ["b.wav", "a.wav"]
        Select(rows[1].find_element(By.CSS_SELECTOR, "select.correct")).select_by_value("classical")
        wait.until(lambda d: labels_in(db_path) == [(str(a), "classical", "dashboard")])
        row_a = lambda: inbox.find_elements(By.CSS_SELECTOR, ".tracks .recent li")[1]  # noqa: E731 (redrawn rows)
        wait.until(lambda d: row_a().find_element(By.CSS_SELECTOR, ".correction").get_attribute("data-genre") == "classical")
        assert row_a().find_element(By.CSS_SELECTOR, ".note").text == "you said: classical"
        # A refusal shows its reason on the row and writes nothing (the file vanished meanwhile).
        b.unlink()
        row_b = inbox.find_elements(By.CSS_SELECTOR, ".tracks .recent li")[0]
        Select(row_b.find_element(By.CSS_SELECTOR, "select.correct")).select_by_value("jazz")
        wait.until(lambda d: row_b.find_element(By.CSS_SELECTOR, ".note").text.startswith("not saved:"))
        assert "no such file" in row_b.find_element(By.CSS_SELECTOR, ".note").text
        assert labels_in(db_path) == [(str(a), "classical", "dashboard")]
        # No script or CSP errors (network ones are expected: this server has no history, b.wav was refused).
        assert not [e for e in driver.get_log("browser") if e["level"] == "SEVERE" and e["source"] != "network"]
    finally:
        driver.quit()


def test_the_daemon_wires_corrections_to_its_watch_library(tmp_path):
    """A real daemon watching a folder with watch.library_db: the page's correction lands in that database."""
    folder = tmp_path / "inbox"
    folder.mkdir()
    db_path = tmp_path / "library.db"
    config = tmp_path / "genre-stream.toml"
    config.write_text(f'[watch]\nsettle_seconds = 0.3\npoll_seconds = 0.3\nlibrary_db = "{db_path}"\n')
    port = free_port()
    cmd = [sys.executable, "-m", "genre_stream", "-v", "run", "--config", str(config), "--source", f"inbox=watch:{folder}",
           "--state-dir", str(tmp_path / "state"), "--threads", "1", "--http", f"127.0.0.1:{port}"]
    daemon = subprocess.Popen(cmd, cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_healthy(port, daemon)
        song = folder / "song.wav"
        shutil.copy(REPO / "examples" / "demo.wav", song)
        base = f"http://127.0.0.1:{port}"

        def listed() -> bool:
            with urllib.request.urlopen(base + "/api/sources", timeout=5) as r:
                doc = json.loads(r.read())
            return any(t.get("path") == str(song) for s in doc["sources"] for t in s["tracks"])

        wait_until(listed, timeout=90, what="the daemon to tag the dropped file")
        status, body = post(base, {"source": "inbox", "path": str(song), "genre": "reggae"}, token=None)
        assert status == 200, body
        assert ("reggae", "dashboard") in [(g, o) for p, g, o in labels_in(db_path) if p == str(song)]
    finally:
        daemon.terminate()
        daemon.wait(20)
