"""Radio as stations serve it (issue 25 #3, #4): a local Icecast-style server with ICY metadata, and a
plain file on a web server, read by real ffmpeg; and the titles carried through the daemon's outputs."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from _helpers_sources import Collector, dominant_frequency, running, write_tone
from conftest import REPO, cli_env, wait_until

from genre_stream.sources import AudioChunk, SourceProblem, TitleChanged, parse_source
from genre_stream.sources.icy import parse_title

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg (apt install ffmpeg)")

METAINT = 4096
TITLES = ("Artist A - Song One", "Artist B - Sõng Two")


def _mp3(tmp_path: Path, seconds: float, freq: float) -> bytes:
    wav = tmp_path / f"tone{freq:.0f}.wav"
    write_tone(wav, seconds, freq=freq)
    out = tmp_path / f"tone{freq:.0f}.mp3"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(wav), "-b:a", "128k", str(out)], check=True)
    return out.read_bytes()


def _meta_block(title: str) -> bytes:
    text = f"StreamTitle='{title}';".encode()
    text += b"\0" * (-len(text) % 16)
    return bytes([len(text) // 16]) + text


class Station(ThreadingHTTPServer):
    """/live: an ICY mount (icy-metaint, no length) at about real time, the title changing half way;
    /file.wav: a plain file with a Content-Length."""

    daemon_threads = True

    def __init__(self, mp3: bytes, wav: bytes, switch_after: float) -> None:
        self.mp3, self.wav, self.switch_after = mp3, wav, switch_after
        self.requests: dict[str, int] = {}
        self.closing = threading.Event()
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: Station

    def log_message(self, fmt: str, *args) -> None:
        pass

    def do_GET(self) -> None:
        srv = self.server
        srv.requests[self.path] = srv.requests.get(self.path, 0) + 1
        if self.path == "/file.wav":
            self.send_response(200)
            self.send_header("Content-Type", "audio/wav")
            self.send_header("Content-Length", str(len(srv.wav)))
            self.end_headers()
            self.wfile.write(srv.wav)
            return
        asked = self.headers.get("Icy-MetaData") == "1"
        self.send_response(200)
        self.send_header("Content-Type", "audio/mpeg")
        self.send_header("icy-name", "Test FM")
        if asked:
            self.send_header("icy-metaint", str(METAINT))
        self.end_headers()
        started = time.monotonic()
        rate = 128_000 / 8  # bytes per second of the 128 kb/s MP3
        sent, pos = 0, 0
        try:
            while not srv.closing.is_set():
                piece = srv.mp3[pos : pos + METAINT]
                if len(piece) < METAINT:
                    piece += srv.mp3[: METAINT - len(piece)]
                pos = (pos + METAINT) % len(srv.mp3)
                self.wfile.write(piece)
                sent += len(piece)
                if asked:
                    title = TITLES[0] if time.monotonic() - started < srv.switch_after else TITLES[1]
                    self.wfile.write(_meta_block(title))
                self.wfile.flush()
                ahead = sent / rate - (time.monotonic() - started) - 2.0  # a 2 s head start, like a station's burst
                if ahead > 0:
                    time.sleep(ahead)
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture
def station(tmp_path):
    wav = tmp_path / "file.wav"
    write_tone(wav, 20.0, freq=440.0)
    server = Station(_mp3(tmp_path, 10.0, 1000.0), wav.read_bytes(), switch_after=5.0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.closing.set()
    server.shutdown()
    server.server_close()


def test_parse_title_takes_utf8_and_latin1() -> None:
    assert parse_title(b"StreamTitle='Daft Punk - One More Time';StreamUrl='';\0\0") == "Daft Punk - One More Time"
    assert parse_title("StreamTitle='Sigur Rós - Hoppípolla';".encode("latin-1")) == "Sigur Rós - Hoppípolla"
    assert parse_title(b"StreamUrl='x';") is None


def test_icy_titles_become_items_and_the_metadata_never_reaches_the_decoder(station, tmp_path) -> None:
    source = parse_source(f"stream:{station.url}/live", state_dir=tmp_path, reconnect_max_seconds=1.0)
    collector = Collector()
    with running(source, collector):
        assert collector.wait_for(lambda items: [i.title for i in items if isinstance(i, TitleChanged)] == list(TITLES), 40), \
            collector.items[-3:]
    assert not collector.problems(), collector.problems()
    audio = np.concatenate([c.samples for c in collector.chunks()])
    assert audio.size > 5 * 22050
    assert dominant_frequency(audio) == pytest.approx(1000.0, abs=5)  # metadata bytes left in would garble it
    first_title = collector.items.index(next(i for i in collector.items if isinstance(i, TitleChanged)))
    assert any(isinstance(i, AudioChunk) for i in collector.items[first_title:])


def test_a_plain_file_over_http_is_paced_to_real_time_and_backs_off_when_it_ends(station, tmp_path) -> None:
    """Issue 25 #3: 3 min of a file came in 4 s, then 28 reconnects in 4 minutes."""
    source = parse_source(f"stream:{station.url}/file.wav", state_dir=tmp_path, reconnect_max_seconds=30.0)
    collector = Collector()
    with running(source, collector):
        time.sleep(5.0)
        in_five = sum(c.samples.size for c in collector.chunks()) / 22050
        assert 2.0 < in_five < 9.0, in_five  # about real time (ffmpeg -re), not 20 s at once
        assert collector.wait_for(lambda items: len([i for i in items if isinstance(i, SourceProblem)]) >= 2, 60)
    first, second = collector.problems()[:2]
    assert "a finite file" in first.reason and "reconnecting in 1 s" in first.reason
    assert "reconnecting in 2 s" in second.reason  # the backoff grows: it is not reset by a file that simply ended
    assert dominant_frequency(np.concatenate([c.samples for c in collector.chunks()])) == pytest.approx(440.0, abs=3)


@pytest.mark.slow
def test_the_daemon_publishes_titles_with_states_and_a_track_changed_event(station, tmp_path) -> None:
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "genre_stream", "-v", "run", "--source", f"fm=stream:{station.url}/live",
                             "--jsonl", str(out), "--hop", "2", "--state-dir", str(tmp_path / "state")],
                            env=cli_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "err.txt", "w"))
    try:
        def lines() -> list[dict]:
            return [json.loads(x) for x in out.read_text().splitlines()] if out.exists() else []

        wait_until(lambda: any(m.get("type") == "track_changed" and m.get("to") == TITLES[1] for m in lines())
                   and any(m.get("title") == TITLES[1] and "state" in m and "type" not in m for m in lines()), 90,
                   "the second title in an event and a state")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    msgs = lines()
    changes = [m for m in msgs if m.get("type") == "track_changed"]
    assert [(c["from"], c["to"]) for c in changes] == [(None, TITLES[0]), (TITLES[0], TITLES[1])]
    states = [m for m in msgs if "state" in m and "type" not in m]
    assert {s["title"] for s in states} <= set(TITLES) and states[-1]["title"] == TITLES[1]
