"""Home Assistant MQTT discovery: one genre sensor and one confidence sensor per source.

The configs are retained, so Home Assistant picks them up whenever it (re)starts, and their
availability is the daemon's status topic, so the sensors go "unavailable" when the daemon
stops or dies (the status topic is also the MQTT last will).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from .. import __version__
from ..config import HomeAssistantConfig


@dataclass(frozen=True)
class Discovery:
    topic: str
    payload: bytes  # b"" retracts the sensor


def object_id(source: str) -> str:
    """Home Assistant object ids allow [a-zA-Z0-9_-]; anything else in a source id becomes _."""
    return re.sub(r"[^a-zA-Z0-9_-]", "_", source)


def discovery_messages(ha: HomeAssistantConfig, prefix: str, source: str, model: str) -> list[Discovery]:
    state_topic = f"{prefix}/{source}/state"
    oid = object_id(source)
    device = {
        "identifiers": [ha.node_id],
        "name": "genre-stream",
        "manufacturer": "genre-stream",
        "model": model,
        "sw_version": __version__,
    }
    common = {
        "state_topic": state_topic,
        "availability_topic": f"{prefix}/status",
        "payload_available": "online",
        "payload_not_available": "offline",
        "device": device,
    }
    genre = {
        **common,
        "name": f"{source} genre",
        "unique_id": f"{ha.node_id}_{oid}_genre",
        "object_id": f"{ha.node_id}_{oid}_genre",
        "icon": "mdi:music",
        "value_template": "{{ value_json.genre if value_json.state == 'music' else 'silence' }}",
        "json_attributes_topic": state_topic,
        "json_attributes_template": "{{ value_json.probabilities | tojson }}",
    }
    confidence = {
        **common,
        "name": f"{source} genre confidence",
        "unique_id": f"{ha.node_id}_{oid}_confidence",
        "object_id": f"{ha.node_id}_{oid}_confidence",
        "icon": "mdi:percent",
        "unit_of_measurement": "%",
        "state_class": "measurement",
        "value_template": "{{ (value_json.confidence * 100) | round(1) }}",
    }
    base = f"{ha.discovery_prefix}/sensor/{ha.node_id}"
    return [
        Discovery(f"{base}/{oid}_genre/config", json.dumps(genre, separators=(",", ":")).encode()),
        Discovery(f"{base}/{oid}_confidence/config", json.dumps(confidence, separators=(",", ":")).encode()),
    ]


def retraction_messages(ha: HomeAssistantConfig, source: str) -> list[Discovery]:
    """Empty retained configs remove the sensors of a source that was dropped from the config."""
    base = f"{ha.discovery_prefix}/sensor/{ha.node_id}/{object_id(source)}"
    return [Discovery(f"{base}_genre/config", b""), Discovery(f"{base}_confidence/config", b"")]
