"""Hostile query parameters on the dashboard's history API and the history command's options.

``since=1e308`` and ``since=nan`` used to pass as unix times and fail in the date formatting:
HTTP 500 with a traceback in the log, and a traceback from ``genre-stream history --since 1e308``.
Every bad value is now a 400 (the CLI: a usage error, exit 2) naming the parameter and the value.
"""

from __future__ import annotations

import http.client
import json
import logging
import urllib.parse

import pytest
from _helpers_dashboard import changed, state
from conftest import run_cli
from dashboards import publish, serve
from test_history import wait_for

from genre_stream.common.timespec import EARLIEST, LATEST, parse_time
from genre_stream.dashboard.corrections import Corrections

T0 = 1_790_000_000.0
BAD_TIMES = ["1e308", "-1e308", "nan", "NaN", "inf", "-inf", "infinity", "99999999999999999999", "-99999999999999d",
             "-1" + "9" * 400 + "w", "0001-01-01", "9999-12-31T23:59:59Z", "1e400", "", "x" * 5000, "\x00"]


@pytest.fixture
def dash(tmp_path):
    s = serve(tmp_path)
    publish(s, state("radio", "rock", 0.8, T0))
    publish(s, changed("radio", "jazz", "rock", T0))
    assert wait_for(lambda: s.history.counters().written == 2)  # written before it is read
    yield s
    s.server.stop()
    s.history.close()


def get(dash, path: str, **params: str) -> tuple[int, dict]:
    status, _, body = dash.get(path + "?" + urllib.parse.urlencode(params))
    try:
        return status, json.loads(body)
    except ValueError:
        return status, {"body": body.decode(errors="replace")}


def test_parse_time_refuses_what_is_not_a_time() -> None:
    for bad in BAD_TIMES:
        with pytest.raises(ValueError) as info:
            parse_time(bad)
        assert len(str(info.value)) < 400, bad  # a 5000-character value is not repeated whole
    assert parse_time("0") == 0.0 and parse_time(str(LATEST)) == LATEST and parse_time(str(EARLIEST)) == EARLIEST


def test_bad_times_are_400_naming_the_parameter_and_value(dash, caplog) -> None:
    caplog.set_level(logging.WARNING)
    for path in ["/api/history", "/api/history.csv"]:
        for name in ["since", "until"]:
            for bad in BAD_TIMES:
                status, body = get(dash, path, **{name: bad})
                assert status == 400, (path, name, bad, body)
                assert body["error"].startswith(f"{name}: "), body
                assert repr(bad.strip()[:20])[:-1] in body["error"] or bad == "", body
    for kind in ["segments", "states", "events"]:  # every reader path, with valid extremes: answered
        status, body = get(dash, "/api/history", kind=kind, since="0", until=str(LATEST))
        assert status == 200 and len(body["items"]) == 1, body
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert "Traceback" not in caplog.text


@pytest.mark.parametrize(("name", "value", "reason"), [
    ("limit", "1e308", "not a whole number"), ("limit", "nan", "not a whole number"),
    ("limit", "inf", "not a whole number"), ("limit", "1.5", "not a whole number"),
    ("limit", "9" * 5000, "not a whole number"), ("limit", "\u0663", "not a whole number"),
    ("limit", "", "not a whole number"), ("limit", "-1", "at least 1"), ("limit", "0", "at least 1"),
    ("kind", "nan", "use one of"), ("kind", "x" * 5000, "use one of"),
    ("source", "x" * 1000, "not a source id"), ("source", "radio\x00", "not a source id"),
    ("source", "a\nb", "not a source id"),
])
def test_other_parameters_are_checked_too(dash, name: str, value: str, reason: str) -> None:
    for path in ["/api/history", "/api/history.csv"]:
        status, body = get(dash, path, **{name: value})
        assert status == 400 and body["error"].startswith(f"{name}=") and reason in body["error"], body
        assert len(body["error"]) < 400


def test_good_values_still_work(dash) -> None:
    status, body = get(dash, "/api/history", kind="states", source="radio", since="-3650d", until="now", limit="99999")
    assert status == 200 and [i["genre"] for i in body["items"]] == ["rock"]
    status, _, csv = dash.get("/api/history.csv?since=2026-09-01T00:00Z&limit=5000")
    assert status == 200 and csv.startswith(b"source,start"), csv


@pytest.mark.parametrize(("args", "message"), [
    (["--since", "1e308"], "Invalid value for '--since': '1e308': not a time between 1970 and 9999"),
    (["--since", "nan"], "Invalid value for '--since': 'nan'"),
    (["--until", "-1e308"], "Invalid value for '--until': '-1e308'"),
    (["--since", "-99999999999999d"], "Invalid value for '--since': '-99999999999999d'"),
    (["--max-gap", "nan"], "Invalid value for '--max-gap': 'nan': must be a finite number of seconds"),
])
def test_history_command_refuses_bad_times_cleanly(tmp_path, args: list[str], message: str) -> None:
    result = run_cli("history", *args, "--state-dir", str(tmp_path), timeout=120)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_a_correction_nested_too_deeply_is_400_not_500(dash, tmp_path, caplog) -> None:
    dash.server.corrections = Corrections(tmp_path / "library.sqlite", ["rock", "jazz"])  # as with watch.library_db
    caplog.set_level(logging.WARNING)
    for body in [b"[" * 100_000 + b"]" * 100_000, b'{"source": "radio", "path": "' + b"p" * 100_000 + b'", "genre": "rock"}']:
        conn = http.client.HTTPConnection("127.0.0.1", dash.server.port, timeout=10)
        conn.request("POST", "/api/label", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        answer = json.loads(response.read())
        conn.close()
        assert response.status in (400, 404) and len(answer["error"]) < 600, answer
    assert "Traceback" not in caplog.text and not [r for r in caplog.records if r.levelno >= logging.ERROR]
