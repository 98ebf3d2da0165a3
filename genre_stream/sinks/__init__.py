"""Where messages go: JSON lines (stdout or a file) and MQTT (with Home Assistant discovery)."""

from .base import Fanout, Sink, SourceAvailability, SourceInfo

__all__ = ["Fanout", "Sink", "SourceAvailability", "SourceInfo"]
