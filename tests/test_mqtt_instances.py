"""Instances that coexist on one broker (issue "What a user meets, round two", item 1).

One setting, ``mqtt.instance`` (``--instance``), names a daemon on the broker: the topic prefix,
the Home Assistant node id and device names and the client id derive from it (``config.Instance``),
and the default instance keeps the names of earlier versions. Two services of different instances
run side by side on a real mosquitto without kicking each other or retracting each other's
entities (even sharing a state dir); a one-off run (files only) gets a client id of its own, leaves
a service of its instance alone, retains nothing of its sources and retracts their entities at its end.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest
from brokers import Broker, Subscriber, retained
from conftest import REPO, run_cli, wait_until

from genre_stream.cli.run import one_off
from genre_stream.config import ConfigError, HomeAssistantConfig, MqttConfig, describe, load_config
from genre_stream.config.mqtt import Instance
from genre_stream.sinks import SourceInfo
from genre_stream.sinks.homeassistant import discovery_messages
from genre_stream.sinks.mqtt import MqttSink
from genre_stream.sinks.topics import Topics

pytestmark = pytest.mark.slow  # brokers and daemon processes

LABELS = ("blues", "jazz", "rock")
HOST = socket.gethostname()
DEMO = REPO / "examples" / "demo.wav"


def info(source: str, kind: str = "mic") -> SourceInfo:
    return SourceInfo(source, kind, LABELS, 5.0, 60.0)


def service(url: str, state_dir: Path, instance: str = "genre-stream", **kw) -> MqttSink:
    """A service's sink (live sources: not a one-off run), with the client id its instance derives."""
    cfg = MqttConfig(url=url, instance=instance, reconnect_min=0.2, reconnect_max=0.5, flush_timeout=2.0)
    return MqttSink(cfg, HomeAssistantConfig(), state_dir, **kw)


# ------------------------------------------------------------------ the names, derived in one place


def test_default_instance_keeps_the_names_of_earlier_versions() -> None:
    config = load_config(None, {"sources": ["mic"]}, environ={})
    m, ha = config.mqtt, config.homeassistant
    assert (m.instance, m.prefix, ha.node_id) == ("genre-stream", "genre-stream", "genre_stream")
    assert m.effective_client_id == f"genre-stream-{HOST}"[:64]
    shown = describe(config)
    assert (shown["mqtt"]["instance"], shown["mqtt"]["prefix"], shown["homeassistant"]["node_id"]) == (
        "genre-stream", "genre-stream", "genre_stream")
    default = Instance()
    assert (default.device_name, default.state_file("mqtt-queue.sqlite3"), default.state_file("homeassistant-discovery.json")) == (
        "genre-stream", "mqtt-queue.sqlite3", "homeassistant-discovery.json")


def test_one_setting_names_everything_and_explicit_settings_still_win() -> None:
    studio = load_config(None, {"sources": ["mic"], "mqtt.instance": "studio"}, environ={})
    assert (studio.mqtt.prefix, studio.homeassistant.node_id, studio.mqtt.effective_client_id) == (
        "studio", "studio", f"studio-{HOST}"[:64])
    from_env = load_config(None, {"sources": ["mic"]}, environ={"GENRE_STREAM_MQTT_INSTANCE": "Back-Room"})
    assert (from_env.mqtt.prefix, from_env.homeassistant.node_id) == ("Back-Room", "back_room")  # entity ids: lower case, _
    explicit = load_config(None, {"sources": ["mic"], "mqtt.instance": "studio", "mqtt.prefix": "home/genre",
                                  "mqtt.client_id": "gs-1"}, environ={})
    assert (explicit.mqtt.prefix, explicit.mqtt.effective_client_id, explicit.homeassistant.node_id) == ("home/genre", "gs-1", "studio")
    assert Instance("studio").state_file("mqtt-queue.sqlite3") == "mqtt-queue-studio.sqlite3"
    assert Instance("studio").source_device_name("radio") == "studio radio"
    for bad in ("a/b", "", "-x", "x" * 49, "sp ace"):
        with pytest.raises(ConfigError, match=r"mqtt\.instance = .*must be 1 to 48 letters, digits, - or _"):
            load_config(None, {"sources": ["mic"], "mqtt.instance": bad}, environ={})


def test_a_one_off_run_gets_a_client_id_of_its_own() -> None:
    assert one_off(["file:/a.wav", "b=file:/b.flac"]) and not one_off(["file:/a.wav", "mic"]) and not one_off([])
    assert not one_off(["watch:/in"]) and not one_off(["stream:http://radio/x"])
    service_id = Instance().client_id
    run = Instance(one_off=True)
    assert run.client_id == f"genre-stream-{HOST}-{os.getpid()}" != service_id
    assert Instance("x" * 48, one_off=True).client_id.endswith(f"-{os.getpid()}")  # the pid survives the 64-byte cut
    assert len(Instance("x" * 48, one_off=True).client_id) <= 64
    assert run.state_file("mqtt-queue.sqlite3") == "mqtt-queue-one-off.sqlite3"  # never the service's queue
    cfg = MqttConfig(url="mqtt://h")
    cfg.one_off = True
    assert cfg.effective_client_id == run.client_id and cfg.identity == run


def test_discovery_of_another_instance_is_under_its_own_node_and_names() -> None:
    studio = Instance("studio")
    announced = {m.topic: json.loads(m.payload)
                 for m in discovery_messages(HomeAssistantConfig(), studio, Topics(studio.prefix), [info("radio")], "m", None)}
    genre = announced["homeassistant/sensor/studio/radio_genre/config"]
    assert genre["device"]["name"] == "studio radio" and genre["device"]["via_device"] == "studio"
    assert genre["default_entity_id"] == "sensor.studio_radio_genre" and genre["state_topic"] == "studio/radio/state"
    bridge = announced["homeassistant/binary_sensor/studio/bridge_status/config"]
    assert bridge["device"]["name"] == "studio" and bridge["state_topic"] == "studio/status"
    assert all(t.split("/")[2] == "studio" for t in announced)


# ------------------------------------------------------------------ two services on one broker


def test_two_instances_run_side_by_side_on_one_broker(mosquitto: Broker, tmp_path: Path) -> None:
    """Same host, same state dir, even the same source id: different instances never kick or retract each other."""
    studio, radio = service(mosquitto.url, tmp_path, "studio"), service(mosquitto.url, tmp_path, "radio")
    assert studio.client._client_id != radio.client._client_id  # both derived: <instance>-<hostname>
    for sink in (studio, radio):
        sink.start()
        sink.sources_changed([info("kitchen")], "m")
    wait_until(lambda: studio.connected.is_set() and radio.connected.is_set(), what="both connected")
    time.sleep(4.0)  # a client-id clash shows within a second or two (reconnect_min 0.2 s)
    assert (studio.connects, radio.connects) == (1, 1) and studio.connected.is_set() and radio.connected.is_set()
    got = retained(mosquitto.port)
    assert (got["studio/status"], got["radio/status"]) == (b"online", b"online")
    for node in ("studio", "radio"):
        cfg = json.loads(got[f"homeassistant/sensor/{node}/kitchen_genre/config"])
        assert cfg["device"]["name"] == f"{node} kitchen" and cfg["state_topic"] == f"{node}/kitchen/state"
        assert json.loads(got[f"homeassistant/binary_sensor/{node}/bridge_status/config"])["state_topic"] == f"{node}/status"
    assert studio.close(3.0) and radio.close(3.0)
    assert {p.name for p in tmp_path.iterdir()} >= {"homeassistant-discovery-studio.json", "homeassistant-discovery-radio.json",
                                                   "mqtt-queue-studio.sqlite3", "mqtt-queue-radio.sqlite3"}

    # studio restarts with its source renamed: it retracts its own kitchen, and nothing of radio's
    again = service(mosquitto.url, tmp_path, "studio")
    again.start()
    again.sources_changed([info("lounge")], "m")
    wait_until(lambda: "homeassistant/sensor/studio/lounge_genre/config" in retained(mosquitto.port, "homeassistant/#", 0.2))
    assert again.close(3.0)
    left = retained(mosquitto.port, "homeassistant/#")
    assert not [t for t in left if "/studio/kitchen_" in t]
    assert "homeassistant/sensor/radio/kitchen_genre/config" in left and "homeassistant/sensor/studio/lounge_genre/config" in left


def test_the_same_instance_twice_does_kick(mosquitto: Broker, tmp_path: Path) -> None:
    """The control for the test above: two services of one instance share a client id and the broker takes it over."""
    first, second = service(mosquitto.url, tmp_path / "a"), service(mosquitto.url, tmp_path / "b")
    assert first.client._client_id == second.client._client_id == f"genre-stream-{HOST}"[:64].encode()
    first.start()
    wait_until(first.connected.is_set)
    second.start()
    try:
        wait_until(lambda: first.connects + second.connects >= 4, timeout=15, what="the two take the client id from each other")
    finally:
        first.close(1.0)
        second.close(1.0)


# ------------------------------------------------------------------ a one-off run


def one_off_run(url: str, state_dir: Path, *extra: str) -> str:
    result = run_cli("run", "--source", f"file:{DEMO}", "--fast", "--mqtt", url, "--state-dir", str(state_dir), *extra,
                     env={"GENRE_STREAM_MQTT_RECONNECT_MIN": "0.2"}, timeout=180)
    assert result.returncode == 0, result.stderr
    return result.stderr


def test_a_one_off_run_beside_the_service_leaves_it_alone_and_takes_back_its_own(mosquitto: Broker, tmp_path: Path) -> None:
    """The default instance for both, as a user types `genre-stream run --source file:x --mqtt ...` beside the service."""
    daemon = service(mosquitto.url, tmp_path / "service", configuration_url="http://host:8080/")
    daemon.start()
    daemon.sources_changed([info("studio")], "m")
    bridge_topic = "homeassistant/binary_sensor/genre_stream/bridge_status/config"
    wait_until(lambda: bridge_topic in retained(mosquitto.port, "homeassistant/#", 0.2))
    before = retained(mosquitto.port)
    sub = Subscriber(mosquitto.port, ["genre-stream/#", "homeassistant/#"])
    try:
        log = one_off_run(mosquitto.url, tmp_path / "run")
        time.sleep(0.5)
        seen = {m.topic for m in sub.messages}
        assert "genre-stream/file-demo/state" in seen and "homeassistant/sensor/genre_stream/file-demo_genre/config" in seen
        genre = next(m.json() for m in sub.on("homeassistant/sensor/genre_stream/file-demo_genre/config") if m.payload)
        assert genre["availability"] == [{"topic": "genre-stream/status"}]  # its availability topic is not retained
        assert daemon.connects == 1 and daemon.connected.is_set()  # never kicked off the broker
        assert b"offline" not in [m.payload for m in sub.on("genre-stream/status")]  # the service never looked down
        after = retained(mosquitto.port)
        assert not [t for t in after if "file-demo" in t], sorted(after)  # no orphan entity, state, availability, attributes
        assert after == before  # the service's status, device config (its dashboard link) and entities, as they were
        assert "took back 6 discovery config(s)" in log and "put back the daemon's device config" in log
        assert not (tmp_path / "run" / "homeassistant-discovery.json").exists()  # the service's ledger is not the run's
        assert (tmp_path / "run" / "mqtt-queue-one-off.sqlite3").exists()
    finally:
        sub.close()
        assert daemon.close(3.0)


def test_a_one_off_run_of_its_own_instance_leaves_only_its_status(mosquitto: Broker, tmp_path: Path) -> None:
    sub = Subscriber(mosquitto.port, ["#"])
    one_off_run(mosquitto.url, tmp_path, "--instance", "demo")
    time.sleep(0.5)
    seen = {m.topic for m in sub.messages}
    sub.close()
    assert {"demo/file-demo/state", "demo/file-demo/availability", "demo/file-demo/attributes",
            "homeassistant/sensor/demo/file-demo_genre/config"} <= seen
    assert not [t for t in seen if t.startswith("genre-stream/") or "/genre_stream/" in t]
    # what stays is the instance's own device, offline, as after any daemon's stop; nothing of the file
    assert retained(mosquitto.port) .keys() == {"demo/status", "homeassistant/binary_sensor/demo/bridge_status/config"}
    assert retained(mosquitto.port)["demo/status"] == b"offline"
