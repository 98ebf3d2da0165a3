"""Faults a year of running brings to the MQTT path: failed queue writes, damaged queue files, a full
state dir, and exceptions inside paho callbacks; real brokers, a real size-limited filesystem."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from _helpers_fs import fill, small_filesystem
from brokers import Broker, Gate, Subscriber
from conftest import wait_until

from genre_stream.config import HomeAssistantConfig, MqttConfig
from genre_stream.sinks.base import SourceInfo
from genre_stream.sinks.messages import GenreEvent
from genre_stream.sinks.mqtt import MqttSink
from genre_stream.sinks.outbox import Outbox


def sink_for(url: str, state_dir: Path, ha: HomeAssistantConfig | None = None) -> MqttSink:
    cfg = MqttConfig(url=url, client_id=f"gs-robust-{time.monotonic_ns()}", reconnect_min=0.2, reconnect_max=0.5)
    return MqttSink(cfg, ha or HomeAssistantConfig(), state_dir)


def event(i: int) -> GenreEvent:
    return GenreEvent.genre_changed("radio", f"g{i}", f"g{i + 1}", 0.5)


def test_failed_put_is_rolled_back_and_later_puts_work(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "q.sqlite3", 100)
    with pytest.raises(UnicodeEncodeError):
        box.put("gs/\udcff/state", b"{}", 1, True)  # SQLite cannot store a lone surrogate: fails inside the transaction
    box.put("gs/radio/state", b"{}", 1, True)
    box.put("gs/radio/event", b"{}", 1, False)
    assert [m.topic for m in box.peek(0, 10)] == ["gs/radio/state", "gs/radio/event"]


def test_full_disk_fails_puts_until_space_returns(tmp_path: Path) -> None:
    with small_filesystem(tmp_path / "small") as small:
        box = Outbox(small / "q.sqlite3", 1000)
        box.put("gs/a/event", b"x" * 200, 1, False)
        filler = fill(small)
        for _ in range(2):
            with pytest.raises(Exception, match="full"):
                box.put("gs/a/event", b"y" * 300, 1, False)
        filler.unlink()
        box.put("gs/a/event", b"z", 1, False)
        assert [m.payload for m in box.peek(0, 10)] == [b"x" * 200, b"z"]
        box.close()


def test_damaged_queue_is_moved_aside_not_deleted(tmp_path: Path, caplog) -> None:
    damaged = b"this is not an SQLite database\n" * 200
    (tmp_path / "q.sqlite3").write_bytes(damaged)
    with caplog.at_level(logging.ERROR, logger="genre_stream.sinks.outbox"):
        box = Outbox(tmp_path / "q.sqlite3", 100)
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("q.sqlite3.damaged-")]
    assert len(aside) == 1 and aside[0].read_bytes() == damaged
    assert any(str(aside[0]) in r.getMessage() and "damaged" in r.getMessage() for r in caplog.records)
    box.put("gs/a/event", b"{}", 1, False)
    assert len(box) == 1


def test_unopenable_queue_is_an_error_not_moved(tmp_path: Path) -> None:
    (tmp_path / "q.sqlite3").mkdir()  # a folder where the file should be: not damage, nothing to move
    with pytest.raises(OSError, match="q.sqlite3"):
        Outbox(tmp_path / "q.sqlite3", 100)
    assert [p.name for p in tmp_path.iterdir()] == ["q.sqlite3"]


def test_callback_exception_does_not_stop_delivery(any_broker: Broker, tmp_path: Path, caplog) -> None:
    """A discovery prefix with a wildcard makes paho raise inside on_connect (config check refuses it too)."""
    live = Subscriber(any_broker.port, ["genre-stream/#"])
    sink = sink_for(any_broker.url, tmp_path, HomeAssistantConfig(discovery_prefix="ha/#"))
    with caplog.at_level(logging.ERROR, logger="genre_stream.sinks.mqtt"):
        sink.start()
        sink.sources_changed([SourceInfo("radio", "stream", ("rock", "jazz"), 5.0, 0.0)], "test-model")
        wait_until(sink.connected.is_set, what="sink connected")
        sink.sources_changed([SourceInfo("radio", "stream", ("rock",), 5.0, 0.0)], "test-model")  # a reload: announces from this thread
        assert "MQTT _announce failed" in caplog.text  # logged, not raised into the daemon
        for i in range(3):
            sink.publish(event(i))
        live.wait_for(lambda ms: len([m for m in ms if m.topic.endswith("/event")]) == 3)
        assert sink._thread.is_alive()
    assert any("_on_connect failed" in r.getMessage() or "_announce" in r.getMessage() for r in caplog.records), caplog.text
    assert sink.close(5)
    live.close()


def test_full_state_dir_does_not_kill_the_network_thread(any_broker: Broker, tmp_path: Path, caplog) -> None:
    gate = Gate(any_broker.port)  # closed: the broker is away while messages queue up
    live = Subscriber(any_broker.port, ["genre-stream/radio/#"])
    with small_filesystem(tmp_path / "state") as state:
        sink = sink_for(gate.url, state)
        sink.start()
        for i in range(5):
            sink.publish(event(i))
        filler = fill(state)
        with caplog.at_level(logging.WARNING, logger="genre_stream.sinks.mqtt"):
            gate.open()
            live.wait_for(lambda ms: len(ms) >= 5)  # delivered although the queue cannot delete them
            wait_until(lambda: "cannot delete delivered messages" in caplog.text, what="removal failure logged")
            assert sink._thread.is_alive()
            t0 = time.monotonic()
            sink.publish(event(50))  # cannot be queued on disk: waits in memory, never blocks or raises into the daemon
            sink.publish(event(51))
            assert time.monotonic() - t0 < 0.5
            wait_until(lambda: "the disk is full" in caplog.text, what="the full disk logged")
            assert sink.lost == 0
            filler.unlink()
            live.wait_for(lambda ms: any(b'"g52"' in m.payload for m in ms))  # issue 24 #8: delivered once space returns
            wait_until(lambda: len(sink.outbox) == 0, what="queue emptied once space returned")
            sink.publish(event(99))
            live.wait_for(lambda ms: any(b'"g100"' in m.payload for m in ms))
        assert "deleted again" in caplog.text and "writable again" in caplog.text and "were lost" not in caplog.text
        assert sink._thread.is_alive()
        assert sink.close(5)
        gate.close()
    live.close()
    received = [m.json()["to"] for m in live.messages]
    assert received[:5] == ["g1", "g2", "g3", "g4", "g5"]
    assert [r for r in received if r in ("g51", "g52")] == ["g51", "g52"]  # in order, once each


def test_two_daemons_with_one_client_id_are_named(mosquitto: Broker, tmp_path: Path, caplog) -> None:
    """The broker kicks the older of two connections with one client id; both reconnect, forever."""
    cfg = MqttConfig(url=mosquitto.url, client_id="gs-same-id", reconnect_min=0.2, reconnect_max=0.5)
    sinks = [MqttSink(cfg, HomeAssistantConfig(enabled=False), tmp_path / f"state{i}") for i in range(2)]
    with caplog.at_level(logging.WARNING, logger="genre_stream.sinks.mqtt"):
        for s in sinks:
            s.start()
        wait_until(lambda: "probably uses the client id 'gs-same-id'" in caplog.text, timeout=30, what="flapping named")
    for s in sinks:
        s.close(0.5)
    assert caplog.text.count("probably uses the client id") <= 2  # said once per daemon, not at every reconnect


def test_a_stable_connection_is_not_called_flapping(any_broker: Broker, tmp_path: Path, caplog) -> None:
    gate = Gate(any_broker.port)
    gate.open()
    sink = sink_for(gate.url, tmp_path)
    with caplog.at_level(logging.WARNING, logger="genre_stream.sinks.mqtt"):
        sink.start()
        wait_until(sink.connected.is_set, what="connected")
        gate.close()  # one broker outage, not a kick
        wait_until(lambda: not sink.connected.is_set(), what="disconnected")
        gate.open()
        wait_until(sink.connected.is_set, what="reconnected")
    sink.close(1)
    gate.close()
    assert "probably uses the client id" not in caplog.text
