"""The dashboard against a year of browsers and scripts: too many open pages, foreign Host headers
(DNS rebinding), missing security headers, odd bearer spelling, and limit=-1; real loopback sockets."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import time

import pytest
from _helpers_dashboard import state
from dashboards import LiveClient, publish, serve
from test_dashboard import TOKEN

from genre_stream.config import HttpSettings


def request(port: int, path: str, host: str | None = "127.0.0.1", headers: dict | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.putrequest("GET", path, skip_host=True)
    if host is not None:
        conn.putheader("Host", host)
    for k, v in (headers or {}).items():
        conn.putheader(k, v)
    conn.endheaders()
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, dict(r.getheaders()), body


@pytest.fixture
def dash(tmp_path):
    s = serve(tmp_path, max_clients=4)
    yield s
    s.server.stop()
    s.history.close()


def test_live_streams_are_capped_and_healthz_keeps_answering(dash) -> None:
    clients = [LiveClient(dash.base) for _ in range(4)]
    for c in clients:
        c.wait("hello")
    assert dash.server.live_clients == 4
    for _ in range(3):  # more pages than allowed: refused at once, nothing held open
        status, headers, body = request(dash.server.port, "/api/live")
        assert status == 503 and headers["Retry-After"] == "10" and b"max_clients" in body
    status, _, body = request(dash.server.port, "/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    publish(dash, state("radio", "rock", 0.9, time.time()))
    for c in clients:  # the admitted pages still get every update
        c.wait("state")
    clients[0].close()
    deadline = time.monotonic() + 10
    while dash.server.live_clients != 3:
        assert time.monotonic() < deadline, dash.server.live_clients
        time.sleep(0.05)
    late = LiveClient(dash.base)
    late.wait("hello")
    for c in clients[1:] + [late]:
        c.close()


def test_foreign_host_headers_are_refused(dash, caplog) -> None:
    port = dash.server.port
    for host in ["127.0.0.1", f"127.0.0.1:{port}", "localhost", f"LOCALHOST:{port}", "[::1]", f"[::1]:{port}"]:
        assert request(port, "/api/sources", host=host)[0] == 200, host
    with caplog.at_level(logging.WARNING):
        for host in ["evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", "localhost.evil", "[::1", ""]:
            status, _, body = request(port, "/api/sources", host=host)
            assert status == 403, host
        assert request(port, "/api/sources", host=None)[0] == 400  # HTTP/1.1 without Host: aiohttp refuses it
    assert "refused a request for host 'evil.example'" in caplog.text


def test_configured_host_names_are_accepted(tmp_path) -> None:
    s = serve(tmp_path, allowed_hosts=("genre.example.lan",))
    try:
        assert request(s.server.port, "/healthz", host="genre.example.lan:80")[0] == 200
        assert request(s.server.port, "/healthz", host="other.example.lan")[0] == 403
    finally:
        s.server.stop()
        s.history.close()


def test_security_headers_on_every_response(dash) -> None:
    for path in ["/", "/static/app.js", "/api/sources", "/healthz", "/metrics", "/nope"]:
        _, headers, _ = request(dash.server.port, path)
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"], path
        assert "default-src 'self'" in headers["Content-Security-Policy"]
        assert headers["X-Content-Type-Options"] == "nosniff"
    # SSE responses too (headers are sent before the stream)
    sock = socket.create_connection(("127.0.0.1", dash.server.port), timeout=10)
    sock.sendall(b"GET /api/live HTTP/1.0\r\nHost: localhost\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    sock.close()
    assert b"X-Content-Type-Options: nosniff" in head and b"Content-Security-Policy" in head


def test_bearer_scheme_is_case_insensitive(tmp_path) -> None:
    s = serve(tmp_path, token=TOKEN)
    try:
        for scheme in ["Bearer", "bearer", "BEARER"]:
            assert request(s.server.port, "/api/sources", headers={"Authorization": f"{scheme} {TOKEN}"})[0] == 200
        assert request(s.server.port, "/api/sources", headers={"Authorization": f"Basic {TOKEN}"})[0] == 401
    finally:
        s.server.stop()
        s.history.close()


def test_history_limit_cannot_bypass_the_cap(dash) -> None:
    for limit in ["-1", "0"]:
        status, _, body = request(dash.server.port, f"/api/history?kind=states&limit={limit}")
        assert status == 400 and b"at least 1" in body, limit


def test_remote_without_token_is_warned_about(tmp_path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="genre_stream.dashboard.server"):
        s = serve(tmp_path, host="0.0.0.0", allow_remote=True)
        s.server.stop()
        s.history.close()
    assert "reachable from the network WITHOUT a token" in caplog.text


def test_http_settings_validate_max_clients() -> None:
    with pytest.raises(ValueError, match="max_clients must be between 1 and 1000"):
        HttpSettings(listen="127.0.0.1:0", max_clients=0)
    assert HttpSettings(listen="127.0.0.1:0", max_clients=5, allowed_hosts=["a.lan"]).dashboard().max_clients == 5
