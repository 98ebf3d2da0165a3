"""Real MQTT brokers for the tests, started on a free loopback port: mosquitto (when the binary is
installed) and amqtt (pure Python, from PyPI, so the suite runs where apt is unavailable).

Also: a subscriber that records what it receives, and a TCP gate that lets a test hold the
daemon's connection closed while a test subscriber gets ready, so that "the daemon delivers
everything after a broker restart" can be checked without racing the subscriber.
"""

from __future__ import annotations

import getpass
import importlib.util
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from conftest import free_port
from paho.mqtt.enums import CallbackAPIVersion

HERE = Path(__file__).resolve().parent
KINDS = ("mosquitto", "amqtt")


def wait_port(port: int, timeout: float = 15.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


class Broker:
    """A broker process; ``restart`` keeps the port, as a real broker restart would."""

    def __init__(self, kind: str, workdir: Path, extra_conf: str = "", port: int | None = None) -> None:
        self.kind = kind
        self.workdir = workdir
        self.port = port or free_port()
        self.extra_conf = extra_conf
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def _command(self) -> list[str]:
        if self.kind == "mosquitto":
            conf = self.workdir / f"mosquitto-{self.port}.conf"
            conf.write_text(
                # user: started as root, mosquitto would switch to "mosquitto", which cannot read test files
                f"user {getpass.getuser()}\nlistener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n{self.extra_conf}"
            )
            return [shutil.which("mosquitto") or "mosquitto", "-c", str(conf)]
        return [sys.executable, str(HERE / "_amqtt_broker.py"), str(self.port)]

    def start(self) -> "Broker":
        log = open(self.workdir / f"{self.kind}-{self.port}.log", "ab")
        self.proc = subprocess.Popen(self._command(), stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_port(self.port)
        except TimeoutError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


def available(kind: str) -> bool:
    if kind == "mosquitto":
        return shutil.which("mosquitto") is not None
    return importlib.util.find_spec("amqtt") is not None


def require(kind: str) -> None:
    if not available(kind):
        why = "the mosquitto binary is not installed (apt install mosquitto)" if kind == "mosquitto" else "amqtt is not installed (pip install amqtt)"
        pytest.skip(f"{kind} broker unavailable: {why}")


@pytest.fixture(params=KINDS)
def broker(request, tmp_path: Path) -> Iterator[Broker]:
    """A fresh broker of each kind (tests using it run once per broker)."""
    require(request.param)
    b = Broker(request.param, tmp_path).start()
    yield b
    b.stop()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Broker]:
    """mosquitto only: MQTT 5 and TLS (amqtt speaks MQTT 3.1.1 only)."""
    require("mosquitto")
    b = Broker("mosquitto", tmp_path).start()
    yield b
    b.stop()


@dataclass
class Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool

    def json(self):
        return json.loads(self.payload)


class Subscriber:
    """A paho client recording every message on ``topics`` (MQTT 3.1.1 unless ``v5``)."""

    def __init__(self, port: int, topics: list[str], v5: bool = False, client_id: str = "") -> None:
        self.messages: list[Received] = []
        self._cond = threading.Condition()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id or f"test-sub-{time.monotonic_ns()}",
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        )
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, 2) for t in topics])
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        if not self.subscribed.wait(10):
            raise TimeoutError("test subscriber did not get its SUBACK")

    def _on_message(self, client, userdata, msg) -> None:
        with self._cond:
            self.messages.append(Received(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain)))
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[list[Received]], bool], timeout: float = 20.0) -> list[Received]:
        end = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.messages):
                left = end - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"condition not met; received {[(m.topic, m.payload[:60]) for m in self.messages]}")
                self._cond.wait(left)
            return list(self.messages)

    def on(self, topic: str) -> list[Received]:
        with self._cond:
            return [m for m in self.messages if m.topic == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Gate:
    """A TCP forwarder 127.0.0.1:port -> broker. While closed, connections are refused (the
    listening socket is shut) and open ones are cut, which the client sees as a broker outage."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def open(self) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(8)
        self._listener = s
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def close(self) -> None:
        with self._lock:
            if self._listener is not None:
                try:  # wakes the thread blocked in accept(); close() alone would not on Linux
                    self._listener.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                self._listener.close()
                self._listener = None
            for c in self._conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                c.close()
            self._conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@pytest.fixture
def any_broker(tmp_path: Path) -> Iterator[Broker]:
    """One broker for tests about the daemon rather than broker compatibility: mosquitto, else amqtt."""
    kind = next((k for k in KINDS if available(k)), None)
    if kind is None:
        pytest.skip("no MQTT broker: install mosquitto (apt) or amqtt (pip)")
    b = Broker(kind, tmp_path).start()
    yield b
    b.stop()


def retained(port: int, pattern: str = "#", settle: float = 0.5) -> dict[str, bytes]:
    """What a newly subscribing client gets: the retained messages, topic -> payload."""
    sub = Subscriber(port, [pattern])
    time.sleep(settle)
    got = {m.topic: m.payload for m in sub.messages if m.retain}
    sub.close()
    return got
