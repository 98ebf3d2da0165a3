"""sd_notify over a real AF_UNIX datagram socket, the daemon's notifications, and the unit files."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, cli_env

from genre_stream.app.systemd import Notifier

UNITS = REPO / "systemd"


@pytest.fixture
def notify_socket(tmp_path: Path):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.2)
    yield path, sock
    sock.close()


def drain(sock: socket.socket, until: str | None = None, timeout: float = 5.0) -> list[str]:
    """Datagrams received until one contains ``until`` (or the timeout)."""
    got: list[str] = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            if until is None:
                break
            continue
        if until is not None and until in got[-1]:
            break
    return got


def test_notifier_sends_the_protocol_messages(notify_socket) -> None:
    path, sock = notify_socket
    n = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "2000000"})
    assert n.enabled and n.watchdog_interval == 2.0
    assert n.ready("2 source(s)")
    assert n.status("working")
    assert n.watchdog_due() is True  # first ping goes out at once...
    assert n.watchdog_due() is False  # ...the next only after WATCHDOG_USEC/2
    assert n.stopping()
    r = n.reloading()
    got = drain(sock)
    assert r and got[:4] == ["READY=1\nSTATUS=2 source(s)", "STATUS=working", "WATCHDOG=1", "STOPPING=1"]
    assert got[4].startswith("RELOADING=1\nMONOTONIC_USEC=") and int(got[4].split("=")[-1]) > 0
    n.close()


def test_abstract_namespace_socket() -> None:
    name = f"genre-stream-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    try:
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).ready()
        assert sock.recv(100) == b"READY=1"
    finally:
        sock.close()


def test_without_systemd_everything_is_a_no_op() -> None:
    n = Notifier({})
    assert not n.enabled and n.watchdog_interval is None
    assert n.ready() is False and n.watchdog_due() is False and n.stopping() is False


def test_watchdog_for_another_pid_is_ignored() -> None:
    assert Notifier({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid() + 1)}).watchdog_interval is None
    assert Notifier({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}).watchdog_interval == 1.0
    assert Notifier({"WATCHDOG_USEC": "soon"}).watchdog_interval is None


def test_daemon_notifies_ready_watchdog_and_stopping(notify_socket, tmp_path: Path) -> None:
    """A real `genre-stream run` process under a fake service manager (our socket)."""
    path, sock = notify_socket
    demo = REPO / "examples" / "demo.wav"
    if not demo.is_file():
        pytest.skip("examples/demo.wav not present")
    env = cli_env({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "400000"})
    proc = subprocess.Popen(
        [sys.executable, "-m", "genre_stream", "run", "--source", f"file:{demo}", "--realtime",
         "--state-dir", str(tmp_path / "state"), "--stats-interval", "0"],
        env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        got = drain(sock, until="READY=1", timeout=60)
        assert got and got[-1].startswith("READY=1\nSTATUS=1 source(s): file-demo"), got
        got = drain(sock, until="WATCHDOG=1", timeout=5)
        assert got[-1] == "WATCHDOG=1"
        proc.send_signal(subprocess.signal.SIGTERM)
        got = drain(sock, until="STOPPING=1", timeout=10)
        assert "STOPPING=1" in got
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()


@pytest.mark.parametrize("unit", ["genre-stream.service", "genre-stream@.service"])
def test_unit_files_pass_systemd_analyze_verify(unit: str, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt install systemd)")
    text = (UNITS / unit).read_text()
    for key in ("Type=notify", "WatchdogSec=", "RestartPreventExitStatus=78", "ProtectSystem=strict", "SupplementaryGroups=audio", "StateDirectory="):
        assert key in text, key
    # verify insists that ExecStart exists; point it at a real executable in a copy of the unit.
    fake = tmp_path / "genre-stream"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    name = unit.replace("@.", "@test.")
    (tmp_path / name).write_text(text.replace("/usr/local/bin/genre-stream", str(fake)))
    result = subprocess.run([analyze, "verify", str(tmp_path / name)], capture_output=True, text=True, timeout=60)
    own = [line for line in (result.stdout + result.stderr).splitlines() if name in line]
    assert result.returncode == 0 and own == [], result.stdout + result.stderr
