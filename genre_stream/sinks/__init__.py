"""Where messages go: JSON lines (stdout or a file) and MQTT (with Home Assistant discovery)."""

from .base import Fanout, ModelSummary, Sink, SourceAvailability, SourceInfo

__all__ = ["Fanout", "ModelSummary", "Sink", "SourceAvailability", "SourceInfo"]
