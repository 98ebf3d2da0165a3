"""Stream source: real ffmpeg reading from a real HTTP server on 127.0.0.1 that drops and stalls."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from _helpers_sources import Collector, dominant_frequency, running, write_tone

from genre_stream.audio.decode import ffmpeg_executable
from genre_stream.sources import AudioChunk, SourceProblem, parse_source

pytestmark = pytest.mark.skipif(ffmpeg_executable() is None, reason="needs ffmpeg (apt install ffmpeg, or pip install imageio-ffmpeg)")


class Radio(ThreadingHTTPServer):
    """Serves one wav. The first ``drops`` requests are cut off after ``cut`` bytes; a stall path hangs."""

    daemon_threads = True

    def __init__(self, wav: bytes, drops: int = 1, cut: float = 0.4) -> None:
        self.wav = wav
        self.drops = drops
        self.cut = int(len(wav) * cut)
        self.requests = 0
        self.release = threading.Event()
        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    server: Radio

    def log_message(self, fmt: str, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        srv = self.server
        srv.requests += 1
        if self.path.startswith("/missing"):
            self.send_error(404, "no such mount")
            return
        self.send_response(200)
        self.send_header("Content-Type", "audio/wav")
        if not self.path.startswith("/stall"):
            self.send_header("Content-Length", str(len(srv.wav)))
        self.end_headers()  # the stall path is unsized, like an Icecast mount
        if self.path.startswith("/stall"):
            self.wfile.write(srv.wav[: len(srv.wav) * 2 // 3])
            self.wfile.flush()
            srv.release.wait(30)  # keep the connection open but silent
            return
        if srv.requests <= srv.drops:
            self.wfile.write(srv.wav[: srv.cut])
            self.wfile.flush()
            self.connection.shutdown(2)  # drop the listener mid-stream
            return
        self.wfile.write(srv.wav)


@pytest.fixture
def radio(tmp_path):
    path = tmp_path / "radio.wav"
    write_tone(path, 3.0, freq=1000.0)
    server = Radio(path.read_bytes())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()


def test_reconnects_after_the_connection_drops(radio, tmp_path):
    source = parse_source(f"stream:{radio.url}/live.wav", state_dir=tmp_path, chunk_seconds=0.1, reconnect_max_seconds=1.0)
    assert source.id == "stream-127-0-0-1"
    collector = Collector()
    with running(source, collector):
        # the drop, then a full second connection: more audio than the first connection delivered
        ok = collector.wait_for(
            lambda items: any(isinstance(i, SourceProblem) for i in items)
            and sum(i.samples.size for i in items if isinstance(i, AudioChunk)) > 3 * 22050 * 1.2,
            timeout=30,
        )
        assert ok, f"no reconnect with audio: {collector.items[-3:]}"
    problems = collector.problems()
    assert "dropped" in problems[0].reason and "reconnecting" in problems[0].reason
    assert source.stats()["reconnects"] >= 1 and radio.requests >= 2
    items = collector.items
    first_problem = items.index(problems[0])
    before = [i for i in items[:first_problem] if isinstance(i, AudioChunk)]
    after = [i for i in items[first_problem:] if isinstance(i, AudioChunk)]
    assert before and after
    # both connections carry the tone
    assert dominant_frequency(np.concatenate([c.samples for c in before])) == pytest.approx(1000.0, abs=3)
    assert dominant_frequency(np.concatenate([c.samples for c in after])) == pytest.approx(1000.0, abs=3)
    # stream time goes on across the drop (never backwards), so the pipeline sees the gap
    assert after[0].time >= before[-1].time + before[-1].samples.size / 22050 - 1e-6


def test_stalled_stream_is_restarted(radio, tmp_path):
    source = parse_source(f"stream:{radio.url}/stall.wav", state_dir=tmp_path, stall_seconds=1.0, reconnect_max_seconds=1.0)
    collector = Collector()
    with running(source, collector):
        assert collector.wait_for(lambda items: len([i for i in items if isinstance(i, SourceProblem)]) >= 1, timeout=20)
    assert "no data for 1 s" in collector.problems()[0].reason
    assert collector.chunks(), "the part that did arrive was emitted"


def test_http_error_is_reported_and_retried(radio, tmp_path):
    url = radio.url.replace("http://", "http://dj:s3cret@") + "/missing.mp3"
    source = parse_source(f"stream:{url}", state_dir=tmp_path, reconnect_max_seconds=1.0)
    collector = Collector()
    with running(source, collector):
        assert collector.wait_for(lambda items: len(items) >= 2, timeout=20)
    problems = collector.problems()
    assert len(problems) >= 2 and not collector.chunks()
    assert "404" in problems[0].reason and "/missing.mp3" in problems[0].reason
    assert "dj:***@" in problems[0].reason and "s3cret" not in problems[0].reason
    assert source.stats()["reconnects"] >= 2
