"""The dashboard against more clients than the daemon has file descriptors for: a real daemon under
``prlimit``, real sockets. At systemd's soft limit (1024) 1,100 held-open clients used to exhaust the
descriptors: the dashboard stopped answering, accept() logged 31,083 tracebacks in 15 s, and a
watched file failed to decode (no descriptor left for its temporary file)."""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _helpers_sources import write_tone
from conftest import REPO, cli_env, free_port

from genre_stream.dashboard.limits import ConnectionLimits

LIMIT = 256  # small, so the test is quick; the cap is planned from it as from 1024
CLIENTS = 300  # more than fit: the cap under 256 descriptors is 160 connections


def fetch(port: int, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
    """One HTTP/1.0 request on a fresh connection: (status, body); status 0 when the connection failed."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(f"GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
    except OSError:
        return 0, b""
    head, _, body = data.partition(b"\r\n\r\n")
    return (int(head.split()[1]) if head.startswith(b"HTTP/") else 0), body


def status_of(data: bytes) -> int:
    """The status code of a response's first bytes; 0 when nothing (or no HTTP) came."""
    parts = data.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[0].startswith(b"HTTP/") and parts[1].isdigit() else 0


def first_bytes(clients: list[socket.socket], seconds: float) -> dict[socket.socket, bytes]:
    """What each client has received within ``seconds`` (b"" for those the server is still reading)."""
    got = {c: b"" for c in clients}
    sel = selectors.DefaultSelector()
    for c in clients:
        sel.register(c, selectors.EVENT_READ)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for key, _ in sel.select(0.2):
            try:
                chunk = key.fileobj.recv(4096)
            except OSError:
                chunk = b""
            got[key.fileobj] += chunk
            if not chunk or len(got[key.fileobj]) >= 64:
                sel.unregister(key.fileobj)
    sel.close()
    return got


@pytest.mark.parametrize("unit", ["genre-stream.service", "genre-stream@.service"])
def test_units_raise_the_descriptor_limit(unit: str) -> None:
    limits = [line.split("=", 1)[1] for line in (REPO / "systemd" / unit).read_text().splitlines()
              if line.startswith("LimitNOFILE=")]
    assert len(limits) == 1 and int(limits[0].split(":")[-1]) >= 4096, limits


def test_connection_limits_follow_the_descriptor_limit() -> None:
    assert ConnectionLimits.plan(32, 1024) == ConnectionLimits(64, 32, 1024, 128, 32)  # the default: by max_clients
    assert not ConnectionLimits.plan(32, 1024).fd_bound
    at_256 = ConnectionLimits.plan(1000, 256)
    assert (at_256.connections, at_256.live, at_256.reserve) == (160, 152, 96) and at_256.fd_bound
    # a raised limit does not let the dashboard take the descriptor numbers select() needs (paho-mqtt)
    assert ConnectionLimits.plan(1000, 65536).connections == 1024 - 128
    assert ConnectionLimits.plan(5, 20).connections == 4 and ConnectionLimits.plan(5, 20).live == 1


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs prlimit (util-linux)")
def test_raise_fd_limit_goes_to_the_hard_limit() -> None:
    code = ("import resource; from genre_stream.dashboard.limits import raise_fd_limit; "
            "print(raise_fd_limit(), resource.getrlimit(resource.RLIMIT_NOFILE))")
    out = subprocess.run(["prlimit", "--nofile=256:4096", sys.executable, "-c", code], env=cli_env(), cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["(256,", "4096)", "(4096,", "4096)"]


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs prlimit (util-linux)")
def test_daemon_under_a_low_descriptor_limit_refuses_what_does_not_fit(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    out, err_path, port = tmp_path / "out.jsonl", tmp_path / "stderr.txt", free_port()
    with open(err_path, "w") as err:
        proc = subprocess.Popen(
            ["prlimit", f"--nofile={LIMIT}:{LIMIT}", sys.executable, "-m", "genre_stream", "run",
             "--source", f"box=watch:{folder}", "--jsonl", str(out), "--state-dir", str(tmp_path / "state"),
             "--stats-interval", "0", "--http", f"127.0.0.1:{port}"],
            env=cli_env({"GENRE_STREAM_WATCH_SETTLE_SECONDS": "0.3", "GENRE_STREAM_WATCH_POLL_SECONDS": "0.2",
                         "GENRE_STREAM_HTTP_MAX_CLIENTS": "1000"}),  # the descriptor limit must be what binds
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=err)
    clients: list[socket.socket] = []

    def wait(cond, what: str, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            assert proc.poll() is None and time.monotonic() < deadline, f"{what}:\n{err_path.read_text()[-3000:]}"
            time.sleep(0.2)

    def tagged() -> list[dict]:
        lines = out.read_text().splitlines() if out.exists() else []
        return [e for e in map(json.loads, lines) if e.get("type") == "track_tagged"]

    try:
        wait(lambda: fetch(port, "/healthz", timeout=2)[0] == 200, "the dashboard never answered")
        try:
            # Live streams and page requests that never finish their headers (held open), alternately.
            for i in range(CLIENTS):
                c = socket.create_connection(("127.0.0.1", port), timeout=10)
                c.sendall(b"GET /api/live HTTP/1.0\r\nHost: localhost\r\n\r\n" if i % 2 else
                          b"GET / HTTP/1.1\r\nHost: localhost\r\n")
                clients.append(c)
            got = first_bytes(clients, 5.0)
            refused = [c for c, data in got.items() if status_of(data) == 503]
            streaming = [c for c, data in got.items() if status_of(data) == 200]
            assert len(refused) >= CLIENTS - 160 and streaming, {data[:20] for data in got.values()}
            assert len(os.listdir(f"/proc/{proc.pid}/fd")) < LIMIT - 32  # the reserve is left to the daemon
            assert fetch(port, "/healthz")[0] == 503  # full: refused at once, not left hanging
            # The daemon's own work goes on meanwhile: a watched file is decoded and tagged.
            write_tone(folder / "tone.wav", 2.0)
            wait(lambda: len(tagged()) == 1, "the watched file was not tagged")
        finally:
            for c in clients:
                c.close()
        wait(lambda: fetch(port, "/healthz", timeout=2)[0] == 200, "/healthz did not answer after the clients left", 20)
        status, metrics = fetch(port, "/metrics")
        assert status == 200 and b'genre_stream_http_refused_total{reason="connections"}' in metrics
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        proc.kill()
        proc.wait()
    log = err_path.read_text()
    assert "Traceback" not in log and "Too many open files" not in log, log[-3000:]
    assert len(log.splitlines()) < 30, log  # one line for the flood, one summary; not one per client
    assert log.count("answering 503 to more") == 1, log
    assert "at most 160 connections (152 live pages): the file descriptor limit is 256" in log
    assert tagged()[0]["path"].endswith("tone.wav")


EXHAUSTED = r"""
import os, sys, logging
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
from genre_stream.config import DashboardConfig
from genre_stream.dashboard.server import DashboardServer
from genre_stream.dashboard.state import DashboardState
server = DashboardServer(DashboardConfig(port=0), DashboardState(["rock", "jazz"], "test-model"))
server.start()
print(server.port, flush=True)
hog = []
try:
    while True:
        hog.append(os.open("/dev/null", os.O_RDONLY))
except OSError:
    pass
print("full", flush=True)
sys.stdin.readline()
for fd in hog:
    os.close(fd)
print("released", flush=True)
sys.stdin.readline()
server.stop()
"""


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs prlimit (util-linux)")
def test_accept_out_of_descriptors_pauses_and_logs_once(tmp_path: Path) -> None:
    """Something else took every descriptor: accept() fails with EMFILE; the listener stops accepting for
    a second at a time and logs that once (asyncio's own loop logged a traceback per queued connection)."""
    err_path = tmp_path / "stderr.txt"
    with open(err_path, "w") as err:
        proc = subprocess.Popen(["prlimit", "--nofile=128:128", sys.executable, "-c", EXHAUSTED], env=cli_env(),
                                cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True)
    waiting: list[socket.socket] = []
    try:
        port = int(proc.stdout.readline())
        assert proc.stdout.readline().strip() == "full"
        for _ in range(20):  # the kernel completes these handshakes; the server cannot accept them yet
            c = socket.create_connection(("127.0.0.1", port), timeout=20)
            c.sendall(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
            waiting.append(c)
        time.sleep(3.5)  # three or four failed attempts
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "released"
        got = first_bytes(waiting, 10.0)  # all are answered once descriptors are back
        assert all(status_of(data) == 200 for data in got.values()), {d[:20] for d in got.values()}
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(30) == 0
    finally:
        for c in waiting:
            c.close()
        proc.kill()
        proc.wait()
    log = err_path.read_text()
    assert "Traceback" not in log, log
    assert log.count("cannot accept connections") == 1, log
    assert len(log.splitlines()) <= 4, log  # the start, the first failure, one summary of the rest
