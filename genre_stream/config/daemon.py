"""The daemon's whole configuration: top-level keys plus one section per feature, composed here.

Each section is declared in a module of its own (``mqtt.py``, ``pipeline.py``, ``http.py``...);
the features import their section from this package, and this package imports no feature.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..common.redact import redact_url
from ..tracks import TRACK_HOP_SECONDS
from .errors import ConfigError
from .fields import check_ranges, flag, option, setting
from .history import HistorySettings
from .http import HttpSettings
from .jsonl import JsonlConfig
from .model import ModelConfig
from .mqtt import HomeAssistantConfig, MqttConfig
from .pipeline import PipelineConfig
from .watch import WatchConfig


def default_state_dir() -> Path:
    """$STATE_DIRECTORY under systemd (StateDirectory=), else the XDG state folder of the user."""
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "genre-stream"


@dataclass
class DaemonConfig:
    sources: list[str] = option(default_factory=list, cli=flag(
        "-s", "--source", help="Input, repeatable: mic[:DEVICE], watch:DIR, file:PATH, stream:URL, optionally ID=SPEC.",
        default_text="none"))
    realtime: bool = option(True, cli=flag("--realtime/--fast", help="Play file: sources at recording speed or as fast as possible."))
    state_dir: Path = option(default_factory=default_state_dir, cli=flag(
        "--state-dir", help="Where the MQTT queue, watch state and history live.",
        default_text="$STATE_DIRECTORY or ~/.local/state/genre-stream"))
    log_level: Literal["debug", "info", "warning", "error"] | None = option(None, cli=flag(
        "--log-level", help="Log level of the daemon.", default_text="info, or what -v asks for"))
    stats_interval: float = setting(60.0, 0, 86400, note="(0 turns stats off)",  # seconds between stats messages
                                    cli=flag("--stats-interval", help="Seconds between stats messages; 0 = off."))
    track_hop_seconds: float = setting(TRACK_HOP_SECONDS, 0, 300, lo_open=True)  # window hop when a watched file is tagged as a whole track
    model: ModelConfig = field(default_factory=ModelConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    watch: WatchConfig = field(default_factory=WatchConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    homeassistant: HomeAssistantConfig = field(default_factory=HomeAssistantConfig)
    jsonl: JsonlConfig = field(default_factory=JsonlConfig)
    http: HttpSettings = field(default_factory=HttpSettings)
    history: HistorySettings = field(default_factory=HistorySettings)

    def __post_init__(self) -> None:
        check_ranges(self)

    @property
    def jsonl_target(self) -> str | None:
        """Where JSON lines go: the configured path, or stdout when nothing else receives the messages."""
        if self.jsonl.path:
            return self.jsonl.path
        return None if self.mqtt.url else "-"


SECTIONS: dict[str, type] = {
    f.name: f.default_factory  # type: ignore[misc]
    for f in dataclasses.fields(DaemonConfig)
    if dataclasses.is_dataclass(f.default_factory)
}


def require_sources(config: DaemonConfig) -> None:
    """A daemon without sources would only idle: refused by ``config check``, ``run`` and reloads alike."""
    if not config.sources:
        raise ConfigError("sources: none configured; give --source SPEC (or sources = [...] in the config file)")


def describe_outputs(config: DaemonConfig) -> list[str]:
    """Where the daemon's results go, for the start banner and `config check`."""
    outs = []
    if config.mqtt.url:
        outs.append(redact_url(config.mqtt.url))  # a password may sit in the URL; logs and terminals must not show it
    if config.jsonl_target:
        outs.append("stdout" if config.jsonl_target == "-" else config.jsonl_target)
    if config.history.enabled:
        outs.append(f"history {config.history.config(config.state_dir).path}")
    if config.http.listen:
        outs.append(f"dashboard {config.http.listen}")
    return outs
