"""Output files over a year: log rotation of the JSON lines file, and a second daemon with the same
MQTT client id (real broker)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from genre_stream.sinks.jsonl import JsonlSink
from genre_stream.sinks.messages import GenreEvent


def event(i: int) -> GenreEvent:
    return GenreEvent.genre_changed("radio", f"g{i}", f"g{i + 1}", 0.5)


def names(path: Path) -> list[str]:
    return [json.loads(line)["to"] for line in path.read_text().splitlines()]


def test_jsonl_follows_log_rotation(tmp_path: Path, caplog) -> None:
    out = tmp_path / "tags.jsonl"
    sink = JsonlSink(str(out))
    sink.start()
    sink.publish(event(0))
    out.rename(tmp_path / "tags.jsonl.1")  # logrotate's default (create) mode
    with caplog.at_level(logging.INFO, logger="genre_stream.sinks.jsonl"):
        sink.publish(event(1))
    assert "rotated" in caplog.text
    (tmp_path / "tags.jsonl").unlink()  # removed by hand
    sink.publish(event(2))
    sink.publish(event(3))
    sink.close(1)
    assert names(tmp_path / "tags.jsonl.1") == ["g1"]
    assert names(out) == ["g3", "g4"]


def test_jsonl_copytruncate_keeps_appending(tmp_path: Path) -> None:
    out = tmp_path / "tags.jsonl"
    sink = JsonlSink(str(out))
    sink.start()
    sink.publish(event(0))
    out.write_text("")  # logrotate copytruncate
    sink.publish(event(1))
    sink.close(1)
    assert names(out) == ["g2"]
