"""What a hostile-input probe found on the MQTT path (real mosquitto on loopback): a flood of Home
Assistant birth messages and garbage on its topic, credentials in the broker URL, malformed URLs, a
queue file locked by another process, a flapping broker and a listener that never answers CONNECT."""

from __future__ import annotations

import logging
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from brokers import Broker, Subscriber, require
from conftest import run_cli, wait_until
from paho.mqtt.enums import CallbackAPIVersion

from genre_stream.config import ConfigError, HomeAssistantConfig, MqttConfig, load_config
from genre_stream.sinks import SourceInfo
from genre_stream.sinks.homeassistant import BIRTH_WINDOW
from genre_stream.sinks.messages import GenreEvent, GenreState
from genre_stream.sinks.mqtt import QUEUE_FILE, MqttSink

pytestmark = pytest.mark.slow  # brokers, daemons' CLIs

PROBS = {"rock": 0.7, "jazz": 0.2, "pop": 0.1}
BIRTH_TOPIC = "homeassistant/status"
GENRE_CONFIG = "homeassistant/sensor/genre_stream/radio_genre/config"
SECRET = "s3cr%t:pw"  # needs percent-encoding in a URL: "s3cr%25t%3Apw"


def sink_for(url: str, state_dir: Path, **kw) -> MqttSink:
    cfg = MqttConfig(url=url, client_id=kw.pop("client_id", f"gs-hostile-{time.monotonic_ns()}"), reconnect_min=0.2,
                     reconnect_max=0.5, **kw)
    return MqttSink(cfg, HomeAssistantConfig(), state_dir)


def info(source: str = "radio") -> SourceInfo:
    return SourceInfo(source, "stream", tuple(PROBS), 5.0, 0.0)


def event(i: int) -> GenreEvent:
    return GenreEvent.genre_changed("radio", f"g{i}", f"g{i + 1}", 0.5)


def publisher(port: int) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"hostile-{time.monotonic_ns()}")
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_start()
    return client


def stop(client: mqtt.Client) -> None:
    client.disconnect()
    client.loop_stop()


# ---------------------------------------------------------------- 1. Home Assistant's birth topic


def test_birth_flood_is_one_reannouncement_per_window_and_states_keep_flowing(mosquitto: Broker, tmp_path: Path,
                                                                            caplog) -> None:
    births = 20_000
    sub = Subscriber(mosquitto.port, [GENRE_CONFIG, "genre-stream/radio/event"])
    sink = sink_for(mosquitto.url, tmp_path)
    flood = publisher(mosquitto.port)
    with caplog.at_level(logging.INFO, logger="genre_stream.sinks"):
        sink.start()
        sink.sources_changed([info()], "m")
        sub.wait_for(lambda ms: len([m for m in ms if m.topic == GENRE_CONFIG]) == 1)  # the announcement on connect
        started = time.monotonic()
        for _ in range(births - 1):
            flood.publish(BIRTH_TOPIC, b"online", qos=0)
        flood.publish(BIRTH_TOPIC, b"online", qos=0).wait_for_publish(30)
        sink.publish(event(1))  # right behind the flood: must not wait for 20,000 announcements
        sent = time.monotonic()
        sub.wait_for(lambda ms: any(m.topic.endswith("/event") for m in ms), timeout=10)
        latency = time.monotonic() - sent
        heard = -1
        while heard != sink.births.heard:  # until the broker has handed over the whole flood (QoS 0: it may drop some)
            heard = sink.births.heard
            time.sleep(1.0)
        flood_seconds = time.monotonic() - started
        time.sleep(3 * BIRTH_WINDOW)  # the last window closes and its announcement is acknowledged
        t = time.monotonic()
        assert sink.close(5)
        closing = time.monotonic() - t
    stop(flood)
    sub.close()
    announced = len([m for m in sub.messages if m.topic == GENRE_CONFIG]) - 1
    lines = [r.getMessage() for r in caplog.records if "Home Assistant came online" in r.getMessage()]
    coalesced = [int(re.search(r"\((\d+) birth messages? coalesced\)", line).group(1)) for line in lines]
    assert latency < 3.0, f"an event waited {latency:.1f} s behind the birth flood"
    assert 1 <= announced <= flood_seconds / BIRTH_WINDOW + 2, (announced, flood_seconds)
    assert births // 2 < sink.births.heard <= births
    assert len(lines) == announced == sink.births.announcements and sum(coalesced) == sink.births.heard
    assert closing < 3.0


class CountingGate:
    """A TCP forwarder 127.0.0.1:port -> broker counting the bytes the broker sends through it."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.received = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self._socks += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, count: bool) -> None:
        try:
            while data := src.recv(65536):
                if count:
                    self.received += len(data)
                dst.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        self._listener.close()
        for s in self._socks:
            s.close()


def test_garbage_on_the_birth_topic_is_ignored_and_mqtt5_never_reads_a_large_one(mosquitto: Broker, tmp_path: Path,
                                                                                  caplog) -> None:
    big = 8 << 20
    pub = publisher(mosquitto.port)
    pub.publish(BIRTH_TOPIC, b"\x00garbage"[:8] * (big // 8), qos=1, retain=True).wait_for_publish(30)
    sub = Subscriber(mosquitto.port, [GENRE_CONFIG])
    gates = {"5": CountingGate(mosquitto.port), "3.1.1": CountingGate(mosquitto.port)}
    sinks = {v: sink_for(gates[v].url, tmp_path / v, protocol=v) for v in gates}
    with caplog.at_level(logging.INFO, logger="genre_stream.sinks"):
        for sink in sinks.values():
            sink.start()
            sink.sources_changed([info()], "m")
        wait_until(lambda: all(s.connected.is_set() for s in sinks.values()), what="both connected")
        wait_until(lambda: gates["3.1.1"].received > big, what="MQTT 3.1.1 gets the retained garbage (it cannot refuse it)")
        for junk in (b"ONLINE", b"online\n", b"online" * 1000, b"offline"):
            pub.publish(BIRTH_TOPIC, junk, qos=1).wait_for_publish(10)
        time.sleep(3 * BIRTH_WINDOW)
        announced = len(sub.on(GENRE_CONFIG))
        assert announced == 2  # one per sink, on connect: garbage announces nothing
        pub.publish(BIRTH_TOPIC, b"online", qos=1).wait_for_publish(10)  # a real birth still works
        sub.wait_for(lambda ms: len([m for m in ms if m.topic == GENRE_CONFIG]) == 4)
    # MQTT 5: the broker never sent the 8 MB message (the sink's maximum packet size), only the small ones
    assert gates["5"].received < 64 * 1024, gates["5"].received
    assert caplog.text.count("ignoring a") <= 6  # a few lines for the garbage, not one per message
    for sink in sinks.values():
        assert sink.close(5)
    for gate in gates.values():
        gate.close()
    stop(pub)
    sub.close()


# ---------------------------------------------------------------- 2. credentials in the URL


def test_credentials_in_the_url_are_used_and_never_shown(tmp_path: Path, caplog) -> None:
    require("mosquitto")
    if shutil.which("mosquitto_passwd") is None:
        pytest.skip("needs mosquitto_passwd to write the broker's password file")
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "bob", SECRET], check=True, capture_output=True)
    passwd.chmod(0o600)
    broker = Broker("mosquitto", tmp_path, extra_conf=f"allow_anonymous false\npassword_file {passwd}\n").start()
    try:
        url = f"mqtt://bob:s3cr%25t%3Apw@127.0.0.1:{broker.port}"
        sink = sink_for(url, tmp_path / "good")
        wrong = sink_for(f"mqtt://bob:b4d-pw@127.0.0.1:{broker.port}", tmp_path / "bad")
        with caplog.at_level(logging.INFO, logger="genre_stream.sinks"):
            sink.start()
            wrong.start()
            sink.publish(event(1))
            wait_until(lambda: sink.delivered >= 1 and sink.queue_depth == 0, what="delivered with the URL's credentials")
            wait_until(lambda: "refused the connection" in caplog.text, what="the wrong password refused")
            assert sink.close(5)
            wrong.close(0.2)
        assert f"mqtt://bob:***@127.0.0.1:{broker.port} refused the connection: Not authorized" in caplog.text
        assert "user:password@ in mqtt.url" in caplog.text
        assert "s3cr" not in caplog.text and "b4d-pw" not in caplog.text
    finally:
        broker.stop()


def test_url_credentials_and_keys_must_agree(tmp_path: Path) -> None:
    def load(text: str, env: dict[str, str] | None = None) -> MqttConfig:
        path = tmp_path / "c.toml"
        path.write_text('sources = ["mic"]\n[mqtt]\n' + text)
        return load_config(path, {}, environ=env or {}).mqtt

    assert load('url = "mqtt://bob:pw@b"\n').credentials == ("bob", "pw")
    assert load('url = "mqtt://bob:s3cr%25t%3Apw@b"\n').credentials == ("bob", SECRET)  # percent-decoded
    assert load('url = "mqtt://bob:pw@b"\nusername = "bob"\npassword = "pw"\n').credentials == ("bob", "pw")
    assert load('url = "mqtt://bob@b"\n', {"GENRE_STREAM_MQTT_PASSWORD": "pw"}).credentials == ("bob", "pw")
    assert load('url = "mqtt://b"\nusername = "u"\npassword = "p"\n').credentials == ("u", "p")
    with pytest.raises(ConfigError, match=r"mqtt\.url .*and mqtt\.username .*disagree.*'bob'.*'alice'"):
        load('url = "mqtt://bob:pw@b"\nusername = "alice"\n')
    with pytest.raises(ConfigError, match=r"mqtt\.url .*and mqtt\.password \(from environment variable .*\) disagree") as exc:
        load('url = "mqtt://bob:hunter2@b"\n', {"GENRE_STREAM_MQTT_PASSWORD": "0th3r-pw"})
    assert "hunter2" not in str(exc.value) and "0th3r-pw" not in str(exc.value)
    with pytest.raises(ConfigError, match=r"mqtt\.url = 'mqtt://:\*\*\*@b' .*has a password but no user name"):
        load('url = "mqtt://:hunter2@b"\n')

    path = tmp_path / "conflict.toml"
    path.write_text('sources = ["mic"]\n[mqtt]\nurl = "mqtt://bob:hunter2@b"\npassword = "0th3r-pw"\n')
    check = run_cli("config", "check", str(path), timeout=120)
    assert check.returncode == 78, check.stderr
    assert "mqtt.url" in check.stderr and "mqtt.password" in check.stderr
    assert "hunter2" not in check.stderr + check.stdout and "0th3r-pw" not in check.stderr + check.stdout


# ---------------------------------------------------------------- 3. malformed URLs


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("mqtt://[::1", r"is not a valid URL \(Invalid IPv6 URL\)"),
        ("mqtt://bob:hunter2@[::1", r"is not a valid URL"),
        ("mqtt://[fe80::zz]:1883", r"is not a valid URL|is not an IPv6 address"),
        ("mqtt://host:99999", r"port must be a number between 1 and 65535"),
        ("mqtt://host:0", r"port must be a number between 1 and 65535"),
        ("mqtt://host:x", r"port must be a number between 1 and 65535"),
        ("ws://host", r"scheme must be mqtt:// or mqtts://"),
        ("host:1883", r"scheme must be mqtt:// or mqtts://"),
        ("mqtt://", r"has no host name"),
        ("mqtt://:1883", r"has no host name"),
        ("mqtt://h ost", r"must not contain spaces or control characters"),
        ("mqtt://ho$t", r"host 'ho\$t' has characters a host name cannot have"),
        ("mqtt://host?x=1", r"must not have a query"),
        ("mqtt://host/gs", r"must not have a path"),
    ],
)
def test_malformed_urls_are_config_errors_naming_the_key(tmp_path: Path, url: str, why: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f'sources = ["mic"]\n[mqtt]\nurl = "{url}"\n')
    with pytest.raises(ConfigError, match=r"^mqtt\.url = '.*' \(from .*c\.toml\): (" + why + ")") as exc:
        load_config(path, {}, environ={})
    assert "hunter2" not in str(exc.value)


def test_a_malformed_url_exits_78_from_run_and_config_check(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('sources = ["mic"]\n[mqtt]\nurl = "mqtt://[::1"\n')
    for args in (("config", "check", str(path)), ("run", "--config", str(path), "--state-dir", str(tmp_path / "state"))):
        result = run_cli(*args, timeout=120)
        assert result.returncode == 78, (args, result.stderr)
        assert "configuration error: mqtt.url = 'mqtt://[::1'" in result.stderr and "Invalid IPv6 URL" in result.stderr
        assert "Traceback" not in result.stderr


# ---------------------------------------------------------------- 4. a locked queue file

HOLD = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("COMMIT")
"""


def test_a_locked_queue_file_never_blocks_publish_and_loses_nothing(any_broker: Broker, tmp_path: Path, caplog) -> None:
    sub = Subscriber(any_broker.port, ["genre-stream/radio/#"])
    sink = sink_for(any_broker.url, tmp_path)
    sink.start()
    wait_until(sink.connected.is_set, what="connected")
    sink.publish(event(0))
    sub.wait_for(lambda ms: len([m for m in ms if m.topic.endswith("/event")]) == 1)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / QUEUE_FILE), "3"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        slowest = 0.0
        with caplog.at_level(logging.INFO, logger="genre_stream.sinks"):
            for i in range(1, 31):
                t = time.monotonic()
                sink.publish(event(i))
                sink.publish(GenreState("radio", "rock", 0.7, dict(PROBS), "music", float(i), i + 30.0, "m"))
                slowest = max(slowest, time.monotonic() - t)
                time.sleep(0.03)
            assert slowest < 0.05, f"publish took {slowest * 1000:.0f} ms while the queue file was locked"
            assert sink.queue_depth >= 30  # waiting in memory, counted
            assert holder.wait(15) == 0
            msgs = sub.wait_for(lambda ms: len([m for m in ms if m.topic.endswith("/event")]) == 31 and any(
                m.topic.endswith("/state") and m.json()["window_start"] == 30.0 for m in ms), timeout=20)
            wait_until(lambda: sink.queue_depth == 0, what="queue drained")
        assert [m.json()["from"] for m in msgs if m.topic.endswith("/event")] == [f"g{i}" for i in range(31)]
        states = [m.json()["window_start"] for m in msgs if m.topic.endswith("/state")]
        assert states[-1] == 30.0 and states == sorted(states)  # retained states: coalesced, the newest last
        assert "is locked by another process" in caplog.text and "free again" in caplog.text
        assert sink.lost == 0 and sink.close(5)
    finally:
        holder.kill()
        sub.close()


# ---------------------------------------------------------------- 5. flapping broker, silent listener


def test_a_flapping_broker_is_not_called_a_client_id_clash(any_broker: Broker, tmp_path: Path, caplog) -> None:
    sink = sink_for(any_broker.url, tmp_path)
    with caplog.at_level(logging.WARNING, logger="genre_stream.sinks"):
        sink.start()
        for _ in range(4):  # each connection ends within seconds of its CONNACK, because the broker goes down
            wait_until(sink.connected.is_set, what="connected")
            time.sleep(0.3)
            any_broker.stop()
            wait_until(lambda: not sink.connected.is_set(), what="disconnected")
            time.sleep(0.8)  # down for a moment, as under systemd's Restart=
            any_broker.start()
        wait_until(sink.connected.is_set, what="connected at last")
    assert sink.close(2)
    assert caplog.text.count("connection to") >= 4
    assert "probably uses the client id" not in caplog.text


def test_a_listener_that_never_answers_connect_is_named(tmp_path: Path, caplog) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(conn)  # held open, never answered

    threading.Thread(target=accept, daemon=True).start()
    cfg = MqttConfig(url=f"mqtt://127.0.0.1:{port}", reconnect_min=0.2, reconnect_max=0.5)
    cfg.connect_timeout = 1.0  # the default is 10 s
    sink = MqttSink(cfg, HomeAssistantConfig(), tmp_path)
    try:
        with caplog.at_level(logging.WARNING, logger="genre_stream.sinks"):
            started = time.monotonic()
            sink.start()
            sink.publish(event(1))
            wait_until(lambda: "did not answer CONNECT" in caplog.text, timeout=10, what="no-answer logged")
            noticed = time.monotonic() - started
            wait_until(lambda: len(accepted) >= 2, what="a second attempt")
            t = time.monotonic()
            assert sink.close(0.2) is False  # the event stays queued for the next start
            assert time.monotonic() - t < 3
        assert noticed < 5, noticed
        assert f"MQTT broker at 127.0.0.1:{port} accepted TCP but did not answer CONNECT within 1 s" in caplog.text
        assert "lost" not in caplog.text
    finally:
        listener.close()
        for conn in accepted:
            conn.close()


def test_connect_timeout_is_a_setting_with_a_range() -> None:
    assert MqttConfig().connect_timeout == 10.0
    with pytest.raises(ValueError, match="connect_timeout"):
        MqttConfig(connect_timeout=0)
