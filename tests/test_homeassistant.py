"""Home Assistant discovery: every config checked against HA's documented schema, the value
templates rendered (with Jinja, as HA does) against the payloads the daemon really publishes,
and what ends up retained on a real broker: availability of a dead source, rounded attributes
published only on change, the last tagged track, and no ghost entities after a rename."""

from __future__ import annotations

import json
import threading
import time
import typing
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
from brokers import Broker, Subscriber, retained
from conftest import wait_until

from genre_stream.app.daemon import Daemon
from genre_stream.config import DaemonConfig, DashboardConfig, HomeAssistantConfig, MqttConfig
from genre_stream.config.mqtt import Instance
from genre_stream.sinks import Fanout, SourceInfo
from genre_stream.sinks.homeassistant import ATTRIBUTE_STEP, NON_GENRE_STATES, AttributeGate, dashboard_url, discovery_messages
from genre_stream.sinks.messages import GenreEvent, GenreState, State
from genre_stream.sinks.mqtt import MqttSink
from genre_stream.sinks.topics import Topics
from genre_stream.sources import AudioChunk, Source, SourceProblem

LABELS = ("blues", "jazz", "rock")
HA = HomeAssistantConfig()
INSTANCE = Instance()  # the default instance: today's names
TOPICS = Topics(INSTANCE.prefix)

# ------------------------------------------------------------------ HA's documented schema
# From home-assistant.io source/_integrations/{sensor,binary_sensor,event}.mqtt.markdown and
# mqtt.markdown (discovery: origin), current as of HA 2025.10: `object_id` is deprecated in
# favour of `default_entity_id` (removal announced for 2026.4). Full key names only: the
# daemon publishes no abbreviations, so an abbreviated key is an error here too.

STR, INT, BOOL, LIST, DICT = str, int, bool, list, dict
COMMON: dict[str, type | tuple[type, ...]] = {
    "availability": LIST,
    "availability_mode": STR,
    "availability_template": STR,
    "availability_topic": STR,
    "default_entity_id": STR,
    "device": DICT,
    "enabled_by_default": BOOL,
    "encoding": STR,
    "entity_category": STR,
    "entity_picture": STR,
    "icon": STR,
    "json_attributes_template": STR,
    "json_attributes_topic": STR,
    "name": (STR, type(None)),
    "origin": DICT,
    "payload_available": STR,
    "payload_not_available": STR,
    "qos": INT,
    "unique_id": STR,
}
COMPONENTS: dict[str, tuple[dict[str, type | tuple[type, ...]], set[str]]] = {
    # component: (its own keys, required keys)
    "sensor": ({
        "device_class": (STR, type(None)),
        "expire_after": INT,
        "force_update": BOOL,
        "last_reset_value_template": STR,
        "options": LIST,
        "suggested_display_precision": INT,
        "state_class": STR,
        "state_topic": STR,
        "unit_of_measurement": (STR, type(None)),
        "value_template": STR,
    }, {"state_topic"}),
    "binary_sensor": ({
        "device_class": (STR, type(None)),
        "expire_after": INT,
        "force_update": BOOL,
        "off_delay": INT,
        "payload_off": STR,
        "payload_on": STR,
        "state_topic": STR,
        "value_template": STR,
    }, {"state_topic"}),
    "event": ({
        "device_class": (STR, type(None)),
        "event_types": LIST,
        "state_topic": STR,
        "value_template": STR,
    }, {"state_topic", "event_types"}),
}
DEPRECATED = {"object_id"}
# binary_sensor.markdown / BinarySensorDeviceClass: what each class shows for on / off (the Input sensor's choice).
BINARY_SENSOR_DEVICE_CLASSES = {
    "battery", "battery_charging", "carbon_monoxide", "cold", "connectivity", "door", "garage_door", "gas", "heat",
    "light", "lock", "moisture", "motion", "moving", "occupancy", "opening", "plug", "power", "presence", "problem",
    "running", "safety", "smoke", "sound", "tamper", "update", "vibration", "window",
}
DEVICE_KEYS = {
    "configuration_url", "connections", "hw_version", "identifiers", "manufacturer", "model", "model_id", "name",
    "serial_number", "suggested_area", "sw_version", "via_device",
}
ORIGIN_KEYS = {"name", "sw_version", "support_url"}
AVAILABILITY_KEYS = {"topic", "payload_available", "payload_not_available", "value_template"}


def schema_errors(component: str, cfg: dict[str, Any]) -> list[str]:
    """Everything in one discovery payload that HA's docs do not allow; [] when valid."""
    own, required = COMPONENTS[component]
    allowed = {**COMMON, **own}
    errors = [f"deprecated key {k}" for k in DEPRECATED & cfg.keys()]
    errors += [f"unknown key {k}" for k in cfg.keys() - allowed.keys() - DEPRECATED]
    errors += [f"missing required {k}" for k in required - cfg.keys()]
    errors += [f"{k} is {type(v).__name__}" for k, v in cfg.items() if k in allowed and not isinstance(v, allowed[k])]
    if "availability" in cfg and "availability_topic" in cfg:
        errors.append("availability and availability_topic together")
    for item in cfg.get("availability", []):
        if "topic" not in item or item.keys() - AVAILABILITY_KEYS:
            errors.append(f"bad availability entry {item}")
    if cfg.get("availability_mode", "latest") not in ("all", "any", "latest"):
        errors.append(f"availability_mode {cfg['availability_mode']}")
    if not str(cfg.get("default_entity_id", f"{component}.x")).startswith(f"{component}."):
        errors.append(f"default_entity_id {cfg['default_entity_id']} is not in the {component} domain")
    if "device" in cfg:
        device = cfg["device"]
        if "unique_id" not in cfg:
            errors.append("device without unique_id")
        if not (device.get("identifiers") or device.get("connections")):
            errors.append("device without identifiers or connections")
        errors += [f"unknown device key {k}" for k in device.keys() - DEVICE_KEYS]
    if "origin" in cfg:
        if "name" not in cfg["origin"]:
            errors.append("origin without name")
        errors += [f"unknown origin key {k}" for k in cfg["origin"].keys() - ORIGIN_KEYS]
    if cfg.get("entity_category") not in (None, "diagnostic", "config"):
        errors.append(f"entity_category {cfg['entity_category']}")
    if component == "sensor":
        if cfg.get("entity_category") not in (None, "diagnostic"):
            errors.append("a sensor's entity_category must be diagnostic")
        if "options" in cfg:
            if cfg.get("device_class") != "enum" or not cfg["options"]:
                errors.append("options need device_class enum and must not be empty")
            if {"state_class", "unit_of_measurement"} & cfg.keys():
                errors.append("options cannot go with state_class or unit_of_measurement")
    if component == "binary_sensor" and cfg.get("device_class") not in (None, *BINARY_SENSOR_DEVICE_CLASSES):
        errors.append(f"device_class {cfg['device_class']} is not a binary sensor class")
    if component == "event" and not cfg.get("event_types"):
        errors.append("event_types empty")
    return errors


def configs(sources: list[SourceInfo], url: str | None = "http://host:8080/") -> dict[str, dict[str, Any]]:
    """topic -> parsed config of everything announced for ``sources``."""
    return {m.topic: json.loads(m.payload) for m in discovery_messages(HA, INSTANCE, TOPICS, sources, "test-model", url)}


def info(source: str, kind: str | None, stats_interval: float = 60.0) -> SourceInfo:
    return SourceInfo(source, kind, LABELS, 5.0, stats_interval)


ALL_KINDS = [info("studio", "mic"), info("radio", "stream"), info("demo", "file"), info("inbox", "watch"), info("other", None)]


def test_every_discovery_payload_matches_the_documented_schema() -> None:
    announced = configs(ALL_KINDS)
    assert len(announced) > 20
    for topic, cfg in announced.items():
        prefix, component, node, key, config = topic.split("/")
        assert (prefix, node, config) == ("homeassistant", "genre_stream", "config")
        assert schema_errors(component, cfg) == [], topic
        assert cfg["origin"]["name"] == "genre-stream" and cfg["origin"]["sw_version"]
    # The checker itself rejects what HA rejects or deprecates.
    genre = announced["homeassistant/sensor/genre_stream/radio_genre/config"]
    assert schema_errors("sensor", {**genre, "object_id": "x"}) == ["deprecated key object_id"]
    assert schema_errors("sensor", {**genre, "stat_t": "x"}) == ["unknown key stat_t"]
    assert schema_errors("sensor", {**genre, "state_class": "measurement"}) == ["options cannot go with state_class or unit_of_measurement"]
    assert schema_errors("event", {k: v for k, v in announced["homeassistant/event/genre_stream/radio_genre_change/config"].items() if k != "event_types"})
    assert schema_errors("sensor", {**genre, "availability_topic": "x"}) == ["availability and availability_topic together"]
    audio = announced["homeassistant/binary_sensor/genre_stream/radio_audio/config"]
    assert schema_errors("binary_sensor", {**audio, "device_class": "audio"}) == ["device_class audio is not a binary sensor class"]


def test_devices_entities_and_availability_per_source() -> None:
    announced = configs(ALL_KINDS)
    by_key = {t.split("/")[3]: c for t, c in announced.items()}

    bridge = by_key["bridge_status"]
    assert bridge["device"]["identifiers"] == ["genre_stream"] and bridge["device"]["name"] == "genre-stream"
    assert bridge["device"]["configuration_url"] == "http://host:8080/"
    assert bridge["state_topic"] == "genre-stream/status" and "availability" not in bridge
    for key, cfg in by_key.items():
        if key != "bridge_status":
            assert cfg["device"]["via_device"] == "genre_stream"
            assert cfg["device"]["identifiers"] == [f"genre_stream_{key.split('_')[0]}"]
            # "genre-stream radio", not a bare "radio" among the user's other devices
            assert cfg["device"]["name"] == f"genre-stream {key.split('_')[0]}"

    # Audio sources: genre (enum), confidence, genre-change event; a folder: last track + track event.
    assert {k for k in by_key if k.startswith("radio_")} == {
        "radio_audio", "radio_genre", "radio_confidence", "radio_genre_change", "radio_errors", "radio_real_time_factor", "radio_reconnects",
    }
    assert {k for k in by_key if k.startswith("demo_")} == {"demo_audio", "demo_genre", "demo_confidence", "demo_genre_change", "demo_errors", "demo_real_time_factor"}
    assert {k for k in by_key if k.startswith("inbox_")} == {"inbox_audio", "inbox_last_track", "inbox_track_tagged", "inbox_errors"}

    genre = by_key["radio_genre"]
    assert genre["options"] == [*LABELS, "uncertain", "not_music", "silence"]
    assert genre["availability"] == [{"topic": "genre-stream/status"}, {"topic": "genre-stream/radio/availability"}]
    assert genre["availability_mode"] == "all"
    assert genre["expire_after"] == 30 and by_key["radio_confidence"]["expire_after"] == 30
    assert genre["default_entity_id"] == "sensor.genre_stream_radio_genre"  # the entity id of earlier versions
    assert genre["json_attributes_topic"] == "genre-stream/radio/attributes"
    audio = by_key["radio_audio"]  # Running / Not running: a microphone or a file is not "Connected"
    assert (audio["name"], audio["device_class"], audio["state_topic"]) == ("Input", "running", "genre-stream/radio/availability")
    assert (audio["payload_on"], audio["payload_off"]) == ("online", "offline")
    assert by_key["inbox_audio"]["device_class"] == "running" and bridge["device_class"] == "connectivity"
    assert audio["availability"] == [{"topic": "genre-stream/status"}]
    assert by_key["radio_genre_change"]["event_types"] == ["genre_changed"]
    assert by_key["inbox_track_tagged"]["event_types"] == ["track_tagged"]
    assert by_key["inbox_last_track"]["options"] == list(LABELS)
    for key in ("radio_errors", "radio_real_time_factor", "radio_reconnects"):
        assert by_key[key]["entity_category"] == "diagnostic" and by_key[key]["state_topic"] == "genre-stream/radio/stats"

    # Without periodic stats there is nothing to feed diagnostics; without a dashboard no link.
    quiet = configs([info("radio", "stream", stats_interval=0)], url=None)
    assert not any(k.endswith(("_errors/config", "_reconnects/config", "_real_time_factor/config")) for k in quiet)
    assert "configuration_url" not in quiet["homeassistant/binary_sensor/genre_stream/bridge_status/config"]["device"]


def test_non_genre_states_cover_every_state_of_the_payload_contract() -> None:
    """A state payload whose ``state`` is not in ``options`` would be rejected by HA's enum sensor."""
    assert typing.get_type_hints(GenreState)["state"] is State
    assert {s.value for s in State} - {"music"} == set(NON_GENRE_STATES)


# ------------------------------------------------------------------ templates, rendered as HA does

def render(template: str, payload: dict[str, Any]) -> str:
    return jinja2.Environment().from_string(template).render(value_json=payload).strip()


def state_payload(state: str, genre: str | None = "rock", confidence: float = 0.734) -> dict[str, Any]:
    probs = {"blues": 0.1, "jazz": 0.2, "rock": 0.7} if state != "silence" else {}
    return GenreState("radio", genre if state != "silence" else None, confidence, probs, state, 0.0, 30.0, "m").to_dict()  # type: ignore[arg-type]


def test_value_templates_turn_real_payloads_into_valid_states_and_events() -> None:
    by_key = {t.split("/")[3]: c for t, c in configs(ALL_KINDS).items()}
    genre, confidence = by_key["radio_genre"], by_key["radio_confidence"]
    assert render(genre["value_template"], state_payload("music")) == "rock"
    assert render(genre["value_template"], state_payload("silence")) == "silence"
    assert render(genre["value_template"], state_payload("uncertain")) == "uncertain"  # the state another branch adds
    for state in ("music", "silence", "uncertain"):
        assert render(genre["value_template"], state_payload(state)) in genre["options"]
    assert render(confidence["value_template"], state_payload("music")) == "73.4"

    change = by_key["radio_genre_change"]["value_template"]
    ev = json.loads(render(change, GenreEvent.genre_changed("radio", None, "jazz", 0.81234).to_dict()))
    assert ev == {"event_type": "genre_changed", "from": None, "to": "jazz", "confidence": 0.812}
    assert json.loads(render(change, GenreEvent.error("radio", "stream dropped").to_dict())) == {}  # ignored by HA

    tagged = GenreEvent("track_tagged", "inbox", {
        "path": '/music/a "b".mp3', "genre": "blues", "confidence": 0.61234, "probabilities": {"blues": 0.61234},
        "duration": 181.2345, "model": "m",
    }).to_dict()
    assert json.loads(render(by_key["inbox_track_tagged"]["value_template"], tagged)) == {
        "event_type": "track_tagged", "path": '/music/a "b".mp3', "genre": "blues", "confidence": 0.612, "duration": 181.2,
    }
    last = by_key["inbox_last_track"]
    assert render(last["value_template"], tagged) in last["options"]
    assert json.loads(render(last["json_attributes_template"], tagged)) == {"path": '/music/a "b".mp3', "confidence": 0.612, "duration": 181.2}


def test_example_automation_uses_announced_entities_and_event_attributes() -> None:
    """examples/homeassistant-automation.yaml must name entities discovery creates, and read
    event attributes the genre-change template really provides."""
    import yaml
    from conftest import REPO

    text = (REPO / "examples" / "homeassistant-automation.yaml").read_text()
    automations = yaml.safe_load(text)
    announced = {c["default_entity_id"]: c for c in configs([info("studio", "mic")]).values()}
    used = {t["entity_id"] for a in automations for t in a["triggers"]}
    assert used <= announced.keys()
    change = announced["event.genre_stream_studio_genre_change"]
    attributes = json.loads(render(change["value_template"], GenreEvent.genre_changed("studio", "jazz", "rock", 0.8).to_dict()))
    assert {"to", "confidence"} <= attributes.keys() and attributes["event_type"] in change["event_types"]
    assert "trigger.to_state.attributes.to" in text and "trigger.to_state.attributes.confidence" in text
    assert "silence" in announced["sensor.genre_stream_studio_genre"]["options"]


def test_attribute_gate_rounds_and_skips_small_changes() -> None:
    gate = AttributeGate()
    first = gate.update("radio", {"rock": 0.712345678, "jazz": 0.287654322})
    assert first is not None and json.loads(first) == {"rock": 0.712, "jazz": 0.288}
    assert gate.update("radio", {"rock": 0.712 + ATTRIBUTE_STEP / 2, "jazz": 0.288 - ATTRIBUTE_STEP / 2}) is None
    assert gate.update("radio", {}) is None  # silence: keep the last probabilities
    assert gate.update("tv", {"rock": 0.71, "jazz": 0.29}) is not None  # per source
    moved = gate.update("radio", {"rock": 0.712 + ATTRIBUTE_STEP, "jazz": 0.288 - ATTRIBUTE_STEP})
    assert moved is not None and json.loads(moved) == {"rock": 0.762, "jazz": 0.238}


def test_dashboard_url() -> None:
    assert dashboard_url(None) is None
    assert dashboard_url(DashboardConfig(host="127.0.0.1", port=8080)) == "http://127.0.0.1:8080/"
    assert dashboard_url(DashboardConfig(host="::1", port=8080)) == "http://[::1]:8080/"
    assert dashboard_url(DashboardConfig(port=0)) is None  # random port: unknown before it binds
    wildcard = dashboard_url(DashboardConfig(host="0.0.0.0", port=9000, allow_remote=True))
    assert wildcard is not None and "0.0.0.0" not in wildcard and wildcard.endswith(":9000/")


# ------------------------------------------------------------------ a real broker

def sink_for(url: str, state_dir: Path) -> MqttSink:
    cfg = MqttConfig(url=url, client_id=f"gs-ha-{time.monotonic_ns()}", reconnect_min=0.2, reconnect_max=0.5)
    return MqttSink(cfg, HomeAssistantConfig(), state_dir)




def test_renamed_source_leaves_no_ghost_entities_after_a_restart(broker: Broker, tmp_path: Path) -> None:
    first = sink_for(broker.url, tmp_path)
    first.start()
    first.sources_changed([info("kitchen", "mic")], "m")
    wait_until(lambda: "homeassistant/sensor/genre_stream/kitchen_genre/config" in retained(broker.port, "homeassistant/#", 0.2))
    assert first.close(5.0)

    second = sink_for(broker.url, tmp_path)  # a new process: same state dir, the source renamed
    second.start()
    second.sources_changed([info("lounge", "mic")], "m")
    wait_until(lambda: "homeassistant/sensor/genre_stream/lounge_genre/config" in retained(broker.port, "homeassistant/#", 0.2))
    assert second.close(5.0)

    configs_left = retained(broker.port, "homeassistant/#")
    assert not [t for t in configs_left if "/kitchen_" in t]  # every kitchen entity retracted
    assert {t for t in configs_left if "/lounge_" in t} == {
        f"homeassistant/{c}/genre_stream/lounge_{k}/config"
        for c, k in [("binary_sensor", "audio"), ("sensor", "genre"), ("sensor", "confidence"), ("event", "genre_change"),
                     ("sensor", "errors"), ("sensor", "real_time_factor"), ("sensor", "reconnects")]
    }
    ledger = json.loads((tmp_path / "homeassistant-discovery.json").read_text())
    assert set(ledger["topics"]) == set(configs_left)


def test_attributes_are_retained_rounded_and_sent_only_on_change(broker: Broker, tmp_path: Path) -> None:
    sub = Subscriber(broker.port, ["genre-stream/radio/attributes"])
    sink = sink_for(broker.url, tmp_path)
    sink.start()
    sink.sources_changed([info("radio", "stream")], "m")
    wait_until(sink.connected.is_set)  # queued while offline, a retained topic keeps only its newest message
    for i in range(6):  # every hop the probabilities wobble a little: one attributes message
        wobble = 0.001 * i
        sink.publish(GenreState("radio", "rock", 0.7, {"rock": 0.7012345 + wobble, "jazz": 0.2987655 - wobble}, "music", i, i + 30.0, "m"))
    sink.publish(GenreState("radio", None, 0.0, {}, "silence", 6, 36.0, "m"))
    sink.publish(GenreState("radio", "jazz", 0.6, {"rock": 0.4, "jazz": 0.6}, "music", 7, 37.0, "m"))
    msgs = sub.wait_for(lambda ms: len(ms) >= 2)
    assert sink.close(5.0)
    time.sleep(0.3)
    assert [m.json() for m in sub.messages] == [{"rock": 0.701, "jazz": 0.299}, {"rock": 0.4, "jazz": 0.6}]
    assert all(m.qos == 1 or broker.kind != "mosquitto" for m in msgs)
    assert json.loads(retained(broker.port, "genre-stream/radio/attributes")["genre-stream/radio/attributes"]) == {"rock": 0.4, "jazz": 0.6}
    sub.close()


def test_watch_source_last_track_is_retained(broker: Broker, tmp_path: Path) -> None:
    sink = sink_for(broker.url, tmp_path)
    sink.start()
    sink.sources_changed([info("inbox", "watch")], "m")
    tagged = GenreEvent("track_tagged", "inbox", {"path": "/in/a.mp3", "genre": "jazz", "confidence": 0.9, "probabilities": {"jazz": 0.9},
                                                  "duration": 10.0, "model": "m"})
    sink.publish(tagged)
    sink.publish(GenreEvent.error("inbox", "x.mp3: not decodable audio", "/in/x.mp3"))  # not a track: the last track stays
    assert sink.close(5.0)
    got = retained(broker.port)
    assert json.loads(got["genre-stream/inbox/track"]) == tagged.to_dict()
    assert "homeassistant/sensor/genre_stream/inbox_genre/config" not in got  # no sensor that stays "Unknown"
    assert "homeassistant/sensor/genre_stream/inbox_last_track/config" in got


# ------------------------------------------------------------------ the daemon: a dead source looks dead

class StepSource(Source):
    """A live source run by the test: each step is a list of items to emit, released one at a time."""

    finite = False

    def __init__(self, source_id: str) -> None:
        self.id = source_id
        self.steps: list[list] = []
        self.go = threading.Semaphore(0)

    def run(self, emit, stop: threading.Event) -> None:
        for items in self.steps:
            while not self.go.acquire(timeout=0.1):
                if stop.is_set():
                    return
            for item in items:
                emit(item)
        stop.wait()


def chunks(source: str, seconds: float, start: float) -> list[AudioChunk]:
    rng = np.random.default_rng(0)
    n = int(seconds * 22050)
    audio = (0.2 * rng.standard_normal(n)).astype(np.float32)
    return [AudioChunk(source, audio[i : i + 2205], start + i / 22050, time.monotonic()) for i in range(0, n, 2205)]


def test_source_availability_follows_the_audio_and_is_retained(engine, broker: Broker, tmp_path: Path) -> None:
    source = StepSource("net")
    source.steps = [chunks("net", 11, 0.0), [SourceProblem("net", "stream dropped; reconnecting in 1 s")], chunks("net", 1, 20.0)]
    config = DaemonConfig(sources=["net=stream:http://radio.invalid/live"], state_dir=tmp_path, stats_interval=0)
    config.mqtt.flush_timeout = 2.0
    sink = sink_for(broker.url, tmp_path)
    sub = Subscriber(broker.port, ["genre-stream/net/#"])
    daemon = Daemon(config, engine=engine, sinks=Fanout([sink]), source_factory=lambda spec, cfg: source)
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(daemon.run()))
    thread.start()
    try:
        def availability() -> list[bytes]:
            return [m.payload for m in sub.messages if m.topic == "genre-stream/net/availability"]

        wait_until(lambda: availability() == [b"offline"])  # started, no audio yet
        source.go.release()
        wait_until(lambda: availability()[-1:] == [b"online"] and any(m.topic == "genre-stream/net/state" for m in sub.messages), 60)
        source.go.release()  # the stream drops
        wait_until(lambda: availability()[-1:] == [b"offline"])
        got = retained(broker.port, "genre-stream/#")
        assert got["genre-stream/net/availability"] == b"offline" and got["genre-stream/status"] == b"online"
        # the last state stays (the contract); white noise is "uncertain" under the calibrated model
        assert json.loads(got["genre-stream/net/state"])["state"] in {"music", "uncertain"}  # ...
        genre = json.loads(retained(broker.port, "homeassistant/sensor/genre_stream/net_genre/config")[
            "homeassistant/sensor/genre_stream/net_genre/config"])
        # ...but HA shows the genre unavailable: it needs this topic online too.
        assert {"topic": "genre-stream/net/availability"} in genre["availability"] and genre["availability_mode"] == "all"
        source.go.release()  # audio flows again
        wait_until(lambda: availability()[-1:] == [b"online"])
    finally:
        daemon.request_stop()
        thread.join(30)
    assert codes == [0]
    assert availability() == [b"offline", b"online", b"offline", b"online", b"offline"]  # stopped: offline again
    sub.close()
