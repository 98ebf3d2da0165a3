"""The daemon's configuration, one module per section; settings ownership runs one way.

Features (sinks, sources, the pipeline, the dashboard) import their settings from here; nothing
in this package imports a feature (tests/test_runtime_imports.py checks), so ``config check``
parses and validates a file without loading the inference, MQTT or HTTP stacks.

- ``errors``    ConfigError
- ``fields``    setting() / option() / flag(): a setting's range and CLI flag declared with it; the topic rule
- ``model``     [model] ModelConfig
- ``pipeline``  [pipeline] PipelineConfig
- ``watch``     [watch] WatchConfig
- ``mqtt``      [mqtt] MqttConfig, [homeassistant] HomeAssistantConfig
- ``jsonl``     [jsonl] JsonlConfig
- ``http``      [http] HttpSettings, and DashboardConfig (the listen rule)
- ``history``   [history] HistorySettings, and HistoryConfig (the history sink's file)
- ``daemon``    DaemonConfig (top-level keys + the sections), require_sources, describe_outputs
- ``load``      defaults < TOML file < GENRE_STREAM_* environment < flags -> DaemonConfig; describe
"""

from __future__ import annotations

from .daemon import SECTIONS, DaemonConfig, default_state_dir, describe_outputs, require_sources
from .errors import ConfigError
from .history import HISTORY_FILENAME, HistoryConfig, HistorySettings
from .http import DashboardConfig, HttpSettings
from .jsonl import JsonlConfig
from .load import (
    DEFAULT_CONFIG_PATH,
    ENV_PREFIX,
    SECRET_KEYS,
    URL_KEYS,
    Layer,
    build_config,
    default_config_path,
    describe,
    env_layer,
    file_layer,
    flag_layer,
    load_config,
)
from .model import ModelConfig
from .mqtt import HomeAssistantConfig, MqttConfig
from .pipeline import PipelineConfig
from .watch import WatchConfig

__all__ = [
    "DEFAULT_CONFIG_PATH", "ENV_PREFIX", "HISTORY_FILENAME", "SECRET_KEYS", "SECTIONS", "URL_KEYS",
    "ConfigError", "DaemonConfig", "DashboardConfig", "HistoryConfig", "HistorySettings", "HomeAssistantConfig",
    "HttpSettings", "JsonlConfig", "Layer", "ModelConfig", "MqttConfig", "PipelineConfig", "WatchConfig",
    "build_config", "default_config_path", "default_state_dir", "describe", "describe_outputs", "env_layer",
    "file_layer", "flag_layer", "load_config", "require_sources",
]
