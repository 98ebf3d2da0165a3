"""Configuration layers (defaults < file < env < flags), coercion, validation messages, `config check`."""

from __future__ import annotations

import json
import socket
import tomllib
from pathlib import Path

import pytest
from conftest import REPO, run_cli

from genre_stream.config import ConfigError, load_config

EXAMPLES = REPO / "examples"


def write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_without_file_env_or_flags() -> None:
    config = load_config(None, {}, environ={})
    assert config.sources == [] and config.realtime is True
    assert config.pipeline.hop_seconds == 5.0 and config.pipeline.min_fill_seconds == 10.0
    assert config.mqtt.url is None and config.jsonl_target == "-"  # no broker: JSON lines on stdout
    assert config.mqtt.prefix == "genre-stream" and config.homeassistant.enabled


def test_precedence_flags_over_env_over_file(tmp_path: Path) -> None:
    path = write(tmp_path, """
sources = ["file:a.wav"]
stats_interval = 30
[pipeline]
hop_seconds = 2.0
min_fill_seconds = 8
[mqtt]
url = "mqtt://file-host:1883"
keepalive = 20
""")
    env = {"GENRE_STREAM_PIPELINE_HOP_SECONDS": "3.5", "GENRE_STREAM_MQTT_URL": "mqtt://env-host", "GENRE_STREAM_SOURCES": "mic, watch:/x"}
    flags = {"mqtt.url": "mqtts://flag-host:8883", "sources": None, "pipeline.hop_seconds": None}
    config = load_config(path, flags, environ=env)
    assert config.mqtt.url == "mqtts://flag-host:8883"  # flag beats env beats file
    assert config.mqtt.host == "flag-host" and config.mqtt.port == 8883 and config.mqtt.tls
    assert config.pipeline.hop_seconds == 3.5  # env beats file; the flag was not given (None)
    assert config.pipeline.min_fill_seconds == 8.0  # file beats default; int coerced to float
    assert config.sources == ["mic", "watch:/x"]  # comma-separated env list
    assert config.stats_interval == 30.0 and config.mqtt.keepalive == 20
    assert config.jsonl_target is None  # a broker is configured and no --jsonl


def test_env_config_path_and_booleans(tmp_path: Path) -> None:
    path = write(tmp_path, 'realtime = true\n[homeassistant]\nenabled = true\n')
    config = load_config(None, {}, environ={"GENRE_STREAM_CONFIG": str(path), "GENRE_STREAM_REALTIME": "no", "GENRE_STREAM_HOMEASSISTANT_ENABLED": "0"})
    assert config.realtime is False and config.homeassistant.enabled is False


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("[mqtt]\nkeepalive = 0\n", {}, r"mqtt\.keepalive = 0 \(from .*config\.toml\): must be between 1 and 65535"),
        ("[mqtt]\nurl = \"http://broker\"\n", {}, r"mqtt\.url = 'http://broker' .*scheme must be mqtt:// or mqtts://"),
        ("[mqtt]\nurl = \"mqtt://broker:99999\"\n", {}, r"mqtt\.url .*port must be a number"),
        ("[pipeline]\nhop_seconds = \"fast\"\n", {}, r"pipeline\.hop_seconds = 'fast' .*must be a number"),
        ("[pipeline]\nema_alpha = 1.5\n", {}, r"pipeline\.ema_alpha = 1\.5 .*must be in \(0, 1\]"),
        ("[pipeline]\nsilence_dbfs = 3\n", {}, r"pipeline\.silence_dbfs = 3\.0 \(from .*config\.toml\): must be in \[-200, 0\)"),
        ("[mqtt]\nkeepalive = 10\nkeepalives = 3\n", {}, r"\[mqtt\] has no key 'keepalives'"),
        ("[mqqt]\nurl = \"mqtt://x\"\n", {}, r"unknown section \[mqqt\]"),
        ("stats_interval = -1\n", {}, r"stats_interval = -1\.0 .*must be between 0 and 86400"),
        ("sources = \"mic\"\n", {}, None),  # a single string is accepted as a one-element list
        ("log_level = \"loud\"\n", {}, r"log_level = 'loud' .*must be one of debug, info, warning, error"),
        ("realtime = 3\n", {}, r"realtime = 3 .*must be true or false"),
        ("[mqtt]\npassword = \"x\"\n", {}, r"mqtt\.password .*given without mqtt\.username"),
        ("[mqtt]\nurl = \"mqtt://b\"\nca_file = \"/nonexistent/ca.pem\"\n", {}, r"mqtt\.ca_file = .*/nonexistent/ca\.pem.*file not found"),
        ("", {"GENRE_STREAM_MQTT_KEEPALIVE": "-5"}, r"mqtt\.keepalive = -5 \(from environment variable GENRE_STREAM_MQTT_KEEPALIVE\)"),
        ("", {"GENRE_STREAM_MQTT_KEEPLIVE": "5"}, r"GENRE_STREAM_MQTT_KEEPLIVE: \[mqtt\] has no key 'keeplive'"),
        ("this is = not toml [", {}, r"config\.toml: not valid TOML"),
    ],
)
def test_bad_values_name_key_origin_and_reason(tmp_path: Path, text: str, env: dict, message: str | None) -> None:
    path = write(tmp_path, text)
    if message is None:
        assert load_config(path, {}, environ=env).sources == ["mic"]
        return
    with pytest.raises(ConfigError, match=message):
        load_config(path, {}, environ=env)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: config file not found"):
        load_config(tmp_path / "nope.toml", {}, environ={})


def test_unrelated_env_vars_are_ignored_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    config = load_config(None, {}, environ={"GENRE_STREAM_DASHBOARD_PORT": "8080", "PATH": "/bin"})
    assert config.mqtt.url is None
    assert "ignoring environment variable GENRE_STREAM_DASHBOARD_PORT" in caplog.text


def test_config_check_cli_accepts_examples_and_rejects_bad_files(tmp_path: Path) -> None:
    good = run_cli("config", "check", str(EXAMPLES / "config.toml"), timeout=120)
    assert good.returncode == 0, good.stderr
    assert "config.toml: ok" in good.stdout

    bad = write(tmp_path, 'sources = ["mic", "wave:/tmp"]\n')
    result = run_cli("config", "check", str(bad), timeout=120)
    assert result.returncode == 78
    assert f"configuration error: {bad}: sources: source 'wave:/tmp': unknown kind 'wave'" in result.stderr

    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "x.wav").write_bytes(b"")
    dup = write(tmp_path, f'sources = ["file:{tmp_path}/a/x.wav", "file:{tmp_path}/b/x.wav"]\n', "dup.toml")
    result = run_cli("config", "check", str(dup), timeout=120)
    assert result.returncode == 78 and "two sources have the id 'file-x'" in result.stderr


def test_config_show_masks_the_password(tmp_path: Path) -> None:
    path = write(tmp_path, '[mqtt]\nurl = "mqtt://b"\nusername = "u"\npassword = "hunter2"\n')
    result = run_cli("config", "show", "--json", "--config", str(path), timeout=120)
    assert result.returncode == 0, result.stderr
    assert '"password": "***"' in result.stdout and "hunter2" not in result.stdout


def test_config_check_refuses_what_would_make_a_service_exit_at_once(tmp_path: Path) -> None:
    """Under systemd the daemon runs in /: a relative or missing file: source plays nothing and exits 0."""
    service = run_cli("config", "check", str(EXAMPLES / "genre-stream.toml"), timeout=120,
                      env={"GENRE_STREAM_MQTT_URL": "mqtt://tagger:hunter2@broker.lan"})
    assert service.returncode == 0, service.stderr
    assert "1 source(s), outputs: mqtt://tagger:***@broker.lan, history " in service.stdout and "hunter2" not in service.stdout

    relative = write(tmp_path, 'sources = ["file:examples/demo.wav"]\n', "relative.toml")
    result = run_cli("config", "check", str(relative), timeout=120)
    assert result.returncode == 78
    assert f"{relative}: sources: 'file:examples/demo.wav': examples/demo.wav is a relative path" in result.stderr

    missing = write(tmp_path, f'sources = ["file:{tmp_path}/gone.wav"]\n', "missing.toml")
    result = run_cli("config", "check", str(missing), timeout=120)
    assert result.returncode == 78 and f"{tmp_path}/gone.wav: no such file" in result.stderr

    empty = write(tmp_path, 'log_level = "info"\n', "empty.toml")
    result = run_cli("config", "check", str(empty), timeout=120)
    assert result.returncode == 78 and "sources: none configured" in result.stderr


def test_config_show_takes_the_file_as_argument_and_prints_loadable_toml(tmp_path: Path) -> None:
    path = write(tmp_path, 'sources = ["mic"]\n[mqtt]\nurl = "mqtt://b"\nusername = "u"\npassword = "hunter2"\n[pipeline]\nhop_seconds = 2.5\n')
    by_argument = run_cli("config", "show", str(path), timeout=120)
    by_option = run_cli("config", "show", "--config", str(path), timeout=120)
    assert by_argument.returncode == 0, by_argument.stderr
    assert by_argument.stdout == by_option.stdout
    shown = tomllib.loads(by_argument.stdout)
    assert shown["sources"] == ["mic"] and shown["pipeline"]["hop_seconds"] == 2.5
    assert shown["mqtt"]["client_id"] == f"genre-stream-{socket.gethostname()}"[:64]  # the effective id, not ""
    assert shown["mqtt"]["password"] == "***" and "hunter2" not in by_argument.stdout
    # What it prints is a config file that loads to the same settings (the masked password aside).
    reloaded = write(tmp_path, by_argument.stdout, "shown.toml")
    again = run_cli("config", "show", "--json", str(reloaded), timeout=120)
    assert again.returncode == 0, again.stderr
    pipeline = json.loads(again.stdout)["pipeline"]
    assert {k: v for k, v in pipeline.items() if v is not None} == shown["pipeline"]  # unset keys are comments in TOML
