"""The dashboard server for tests, in-process on a free loopback port: the ``served`` fixture (registered
in conftest.py's ``pytest_plugins``), ``serve`` for a server with other settings, ``publish`` (what the
daemon does with a message) and ``LiveClient`` (a page's EventSource).
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

import pytest
from _helpers_dashboard import LABELS

from genre_stream.config import DashboardConfig
from genre_stream.dashboard.server import DashboardServer
from genre_stream.dashboard.state import DashboardState
from genre_stream.history.reader import HistoryReader
from genre_stream.sinks.history import History, HistoryConfig


@dataclass
class Served:
    server: DashboardServer
    state: DashboardState
    history: History
    base: str = field(init=False)

    def __post_init__(self) -> None:
        self.base = self.server.url.rstrip("/")

    def get(self, path: str, token: str | None = None, timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(self.base + path)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def json(self, path: str, token: str | None = None):
        status, _, body = self.get(path, token)
        assert status == 200, body
        return json.loads(body)


def serve(tmp_path, **config) -> Served:
    history = History(HistoryConfig.in_state_dir(tmp_path, retention_days=0))
    history.start()
    state_ = DashboardState(LABELS, "test-model", mel_interval_seconds=0.05, precision="int8")
    server = DashboardServer(DashboardConfig(port=0, **config), state_, HistoryReader(history.config.path))
    server.start()
    return Served(server, state_, history)


@pytest.fixture
def served(tmp_path):
    s = serve(tmp_path)
    yield s
    s.server.stop()
    s.history.close()


def publish(s: Served, msg) -> None:
    """What the daemon does with each message: history and dashboard."""
    s.history.publish(msg)
    s.state.publish(msg)


class LiveClient:
    """Reads the server-sent events stream on a thread, like a page's EventSource.

    A plain socket speaking HTTP/1.0 (so the body is the raw stream, not chunked) lets
    ``close()`` really close the connection, as a browser tab does.
    """

    def __init__(self, base: str, path: str = "/api/live") -> None:
        host, port = base.split("//", 1)[1].rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=20)
        self.sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        self.events: list[tuple[str, dict]] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        kind = None
        try:
            with self.sock.makefile("rb") as stream:
                for raw in stream:
                    line = raw.decode().rstrip("\r\n")
                    if line.startswith("event: "):
                        kind = line[7:]
                    elif line.startswith("data: ") and kind:
                        with self.lock:
                            self.events.append((kind, json.loads(line[6:])))
        except (OSError, ValueError):
            pass  # closed by the test or the server

    def wait(self, kind: str, count: int = 1, timeout: float = 10.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                got = [p for k, p in self.events if k == kind]
            if len(got) >= count:
                return got
            time.sleep(0.02)
        raise AssertionError(f"no {count} {kind!r} events within {timeout} s; got {[k for k, _ in self.events]}")

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
