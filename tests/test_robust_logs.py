"""Log floods: a problem that repeats thousands of times is one line and a count, not thousands of lines.

``common.ratelimit.RateLimitedLog`` with an injected clock, and the dashboard against 3,000 requests
with a bad Host header (which used to write 3,000 WARNING lines), over real loopback sockets.
"""

from __future__ import annotations

import http.client
import logging

from dashboards import serve

from genre_stream.common.ratelimit import RateLimitedLog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def messages(caplog, name: str = "test.ratelimit") -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == name]


def test_first_in_full_then_one_summary_per_interval(caplog) -> None:
    clock = Clock()
    limiter = RateLimitedLog(logging.getLogger("test.ratelimit"), "refused {count:,} more in the last {seconds:.0f} s",
                             interval=60.0, clock=clock)
    caplog.set_level(logging.WARNING, logger="test.ratelimit")
    assert limiter.hit("refused %s", "first") is True
    for _ in range(2999):  # the same minute
        clock.now += 0.01
        assert limiter.hit("refused %s", "again") is False
    assert messages(caplog) == ["refused first"] and limiter.pending == 2999
    assert limiter.flush() is False  # the minute is not over: nothing yet
    clock.now = 1061.0
    assert limiter.flush() is True  # a timer's flush after the minute: the count
    assert messages(caplog) == ["refused first", "refused 2,999 more in the last 60 s"]
    # the flood goes on: counted into the next summary, still no line per hit
    clock.now = 1070.0
    assert limiter.hit("refused %s", "later") is False
    clock.now = 1122.0
    assert limiter.hit("refused %s", "next minute") is True  # closes the last minute: its summary, not itself
    assert messages(caplog)[-1] == "refused 1 more in the last 60 s" and limiter.pending == 1
    assert limiter.flush(force=True) is True  # at shutdown: whatever is pending
    assert messages(caplog)[-1] == "refused 1 more in the last 60 s"
    # quiet for a while: the next occurrence is news again, in full
    clock.now = 2000.0
    limiter.hit("refused %s", "after a quiet spell")
    assert messages(caplog)[-1] == "refused after a quiet spell"
    assert limiter.total == 3003 and len(messages(caplog)) == 5


def test_a_flood_of_bad_host_requests_is_one_line_and_a_count(tmp_path, caplog) -> None:
    served = serve(tmp_path)
    port = served.server.port
    caplog.set_level(logging.INFO, logger="genre_stream.dashboard")
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)  # keep-alive: the flood is quick
        for _ in range(3000):
            conn.putrequest("GET", "/api/sources", skip_host=True)
            conn.putheader("Host", "evil.example")
            conn.endheaders()
            response = conn.getresponse()
            response.read()
            assert response.status == 403
        conn.close()
        _, _, metrics = served.get("/metrics")
        assert b'genre_stream_http_refused_total{reason="host"} 3000.0' in metrics
    finally:
        served.server.stop()  # shutting down writes the pending summary
        served.history.close()
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert lines == [
        "dashboard: refused a request for host 'evil.example' (accepted: IP addresses, localhost and "
        "http.allowed_hosts [])",
        "dashboard: refused 2,999 more requests with a bad Host header in the last 60 s",
    ]


def test_malformed_requests_are_400_and_one_line_not_a_traceback_each(tmp_path, caplog) -> None:
    """aiohttp logged every request it could not parse as an ERROR with a traceback (a URL over 8190 bytes)."""
    served = serve(tmp_path)
    caplog.set_level(logging.INFO)
    try:
        for _ in range(300):
            conn = http.client.HTTPConnection("127.0.0.1", served.server.port, timeout=10)
            conn.request("GET", "/api/history?kind=" + "x" * 9000)
            assert conn.getresponse().status == 400
            conn.close()
        assert served.get("/healthz")[0] == 200
    finally:
        served.server.stop()
        served.history.close()
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 2 and "Traceback" not in caplog.text, lines
    assert lines[0].startswith("dashboard: Error handling request from 127.0.0.1: 400, message:")
    assert len(lines[0]) < 400
    assert lines[1] == "dashboard: refused 299 more malformed requests in the last 60 s"
