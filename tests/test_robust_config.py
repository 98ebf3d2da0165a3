"""Configuration that a year of edits brings: values the run would die on, non-UTF-8 files, secrets in
output, and SIGHUP reloads of broken files against a running daemon process."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, cli_env, free_port, run_cli

from genre_stream.common.redact import redact_url
from genre_stream.config import ConfigError, load_config

TOP = 'sources = ["mic"]\n'


def write(tmp_path: Path, text: str | bytes, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("[model]\nthreads = 100000\n", {}, r"model\.threads = 100000 \(from .*config\.toml\): must be between 0 and 256"),
        ("[mqtt]\nflush_timeout = 1e308\n", {}, r"mqtt\.flush_timeout = 1e\+308 .*: must be between 0 and 3600"),
        ("[pipeline]\nhop_seconds = inf\n", {}, r"pipeline\.hop_seconds = inf .*: must be a finite number"),
        ("[pipeline]\nhop_seconds = nan\n", {}, r"pipeline\.hop_seconds = nan .*: must be a finite number"),
        ("", {"GENRE_STREAM_PIPELINE_HOP_SECONDS": "inf"}, r"pipeline\.hop_seconds = 'inf' \(from environment variable .*\): must be a finite"),
        ("[mqtt]\nreconnect_min = 1e300\n", {}, r"mqtt\.reconnect_min = 1e\+300 .*: must be in \(0, 3600\]"),
        ("[mqtt]\nreconnect_min = 30.0\nreconnect_max = 10.0\n", {}, r"mqtt\.reconnect_min = 30\.0 .*: must be <= mqtt\.reconnect_max"),
        ("stats_interval = 1e12\n", {}, r"stats_interval = 1000000000000\.0 .*: must be between 0 and 86400 \(0 turns stats off\)"),
        ("[watch]\npoll_seconds = 0\n", {}, r"watch\.poll_seconds = 0\.0 .*: must be in \(0, 3600\]"),
        ("[homeassistant]\ndiscovery_prefix = \"ha/#\"\n", {}, r"homeassistant\.discovery_prefix = 'ha/#' .*: must not contain the MQTT wildcards"),
        ("[homeassistant]\ndiscovery_prefix = \"ha/+/x\"\n", {}, r"discovery_prefix .*wildcards"),
        ("[mqtt]\nprefix = \"$SYS/gs\"\n", {}, r"mqtt\.prefix = '\$SYS/gs' .*: must not start with \$"),
        ("[mqtt]\nprefix = \"gs/\"\n", {}, r"mqtt\.prefix .*must not end with /"),
        ("[mqtt]\nprefix = \"\"\n", {}, r"mqtt\.prefix = '' .*must not be empty"),
        ("[mqtt]\nprefix = \"g\\u0000s\"\n", {}, r"mqtt\.prefix .*NUL"),
    ],
)
def test_values_the_run_would_die_on_are_refused(tmp_path: Path, text: str, env: dict, message: str) -> None:
    path = write(tmp_path, TOP + text)
    with pytest.raises(ConfigError, match=message):
        load_config(path, {}, environ=env)


def test_ranges_also_hold_for_code_that_builds_the_settings() -> None:
    from genre_stream.config import PipelineConfig

    with pytest.raises(ValueError, match="hop_seconds must be a finite number"):
        PipelineConfig(hop_seconds=float("inf"))


def test_config_check_refuses_no_sources_and_non_utf8_with_78(tmp_path: Path) -> None:
    empty = write(tmp_path, "[pipeline]\nhop_seconds = 2\n", "empty.toml")
    result = run_cli("config", "check", str(empty), timeout=120)
    assert result.returncode == 78 and "sources: none configured" in result.stderr, result.stderr

    latin1 = write(tmp_path, 'sources = ["mic"]\n# caf\xe9 in Latin-1\n'.encode("latin-1"), "latin1.toml")
    result = run_cli("config", "check", str(latin1), timeout=120)
    assert result.returncode == 78, result.stderr
    assert "Traceback" not in result.stderr
    assert "latin1.toml: not UTF-8 text (byte 0xe9 at offset" in result.stderr


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("mqtt://bob:hunter2@broker:1883", "mqtt://bob:***@broker:1883"),
        ("mqtts://:hunter2@broker", "mqtts://:***@broker"),
        ("mqtt://bob@broker", "mqtt://bob@broker"),
        ("mqtt://broker", "mqtt://broker"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_passwords_never_reach_output(tmp_path: Path, caplog) -> None:
    url_pw = write(tmp_path, TOP + '[mqtt]\nurl = "mqtt://bob:hunter2@127.0.0.1:1"\n', "url.toml")
    show = run_cli("config", "show", "--config", str(url_pw), timeout=120)
    assert show.returncode == 0, show.stderr
    assert "hunter2" not in show.stdout and "mqtt://bob:***@127.0.0.1:1" in show.stdout
    check = run_cli("config", "check", str(url_pw), timeout=120)
    assert check.returncode == 0 and "hunter2" not in check.stdout + check.stderr, check.stdout

    alone = write(tmp_path, TOP + '[mqtt]\nurl = "mqtt://b"\npassword = "hunter2"\n', "alone.toml")
    refused = run_cli("config", "check", str(alone), timeout=120)
    assert refused.returncode == 78 and "mqtt.password = '***'" in refused.stderr
    assert "hunter2" not in refused.stderr

    bad_url = write(tmp_path, TOP + '[mqtt]\nurl = "http://bob:hunter2@b"\n', "bad.toml")
    refused = run_cli("config", "check", str(bad_url), timeout=120)
    assert refused.returncode == 78 and "http://bob:***@b" in refused.stderr and "hunter2" not in refused.stderr

    from genre_stream.config import HomeAssistantConfig, MqttConfig
    from genre_stream.sinks.mqtt import MqttSink

    port = free_port()  # nothing listens: the sink logs "unreachable" with its URL
    sink = MqttSink(MqttConfig(url=f"mqtt://bob:hunter2@127.0.0.1:{port}", username="bob", password="hunter2",
                               reconnect_min=0.1, reconnect_max=0.2), HomeAssistantConfig(), tmp_path / "state")
    with caplog.at_level(logging.INFO, logger="genre_stream.sinks.mqtt"):
        sink.start()
        deadline = time.monotonic() + 10
        while "unreachable" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
        sink.close(0.1)
    assert f"mqtt://bob:***@127.0.0.1:{port}" in caplog.text and "hunter2" not in caplog.text


def test_sighup_with_broken_files_keeps_the_running_config(tmp_path: Path) -> None:
    inbox = tmp_path / "in"
    inbox.mkdir()
    good = f'sources = ["box=watch:{inbox}"]\nstats_interval = 0\n[jsonl]\npath = "{tmp_path / "out.jsonl"}"\n'
    config = write(tmp_path, good)
    err_path = tmp_path / "stderr.txt"
    with open(err_path, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "genre_stream", "-v", "run", "--config", str(config),
                                 "--state-dir", str(tmp_path / "state")], env=cli_env(), cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        def wait_log(text: str, timeout: float = 60.0) -> None:
            deadline = time.monotonic() + timeout
            while text not in err_path.read_text():
                assert proc.poll() is None, f"daemon exited with {proc.returncode}:\n{err_path.read_text()}"
                assert time.monotonic() < deadline, f"{text!r} not logged:\n{err_path.read_text()}"
                time.sleep(0.1)

        wait_log("sources box (watch)")  # the start banner
        broken = [
            (good.encode() + b"# caf\xe9\n", "not UTF-8 text"),
            (good.replace("stats_interval = 0", "stats_interval = 0\n[pipeline]\nhop_seconds = inf").encode(), "must be a finite number"),
            (good.replace("stats_interval = 0", "stats_interval = 0\n[mqtt]\nprefix = \"$SYS/x\"").encode(), "must not start with $"),
            (b"stats_interval = 0\n", "sources: none configured"),
        ]
        for n, (content, reason) in enumerate(broken, 1):
            config.write_bytes(content)
            proc.send_signal(signal.SIGHUP)
            wait_log(reason)
            assert err_path.read_text().count("reload failed") == n
        config.write_text(good.replace("stats_interval = 0", "stats_interval = 0\n[pipeline]\nhop_seconds = 3"))
        proc.send_signal(signal.SIGHUP)
        wait_log("configuration reloaded")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        proc.kill()
    assert "Traceback" not in err_path.read_text()
