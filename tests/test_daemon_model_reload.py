"""SIGHUP picks up a new model file (a fine-tuned model written over the configured path), keeps a broken one out.

A real `genre-stream run` process, a real signal, the model files on disk."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import soundfile as sf
from conftest import REPO, cli_env, music_like, wait_until

from genre_stream.model.bundled import bundled_model_path


def _states(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip() and "state" in json.loads(line)) if path.exists() else 0


def test_sighup_swaps_the_model_and_keeps_the_running_one_when_the_new_file_is_broken(tmp_path: Path) -> None:
    clip = tmp_path / "long.wav"
    sf.write(clip, music_like(120.0), 22050)
    model = tmp_path / "model.onnx"
    shutil.copy(bundled_model_path("fp32"), model)
    config = tmp_path / "config.toml"
    out = tmp_path / "states.jsonl"
    config.write_text(f'sources = ["live=file:{clip}"]\nstats_interval = 0\n[model]\npath = "{model}"\n'
                      f'[pipeline]\nmin_fill_seconds = 2\nhop_seconds = 1\n[jsonl]\npath = "{out}"\n[history]\nenabled = false\n')
    err_path = tmp_path / "stderr.txt"
    with open(err_path, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "genre_stream", "-v", "run", "--config", str(config), "--state-dir", str(tmp_path / "state")],
                                env=cli_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=err)

    def log() -> str:
        return err_path.read_text()

    def still_classifying() -> None:
        seen = _states(out)
        wait_until(lambda: _states(out) > seen + 1, 60, "states after the reload")

    try:
        wait_until(lambda: _states(out) > 0, 90, "first state")
        proc.send_signal(signal.SIGHUP)  # nothing changed: the model is not loaded again
        wait_until(lambda: "configuration reloaded" in log(), 30, "first reload")
        assert "replaces" not in log()

        model.write_bytes(b"half-copied model")  # rewritten in place, broken
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "reload: keeping the running model" in log(), 30, "refusal of the broken model")
        assert f"keeping the running model {model} (bbnn-gtzan-augmented-fold0): {model}: not a loadable ONNX model" in log()
        still_classifying()

        fresh = tmp_path / "fresh.onnx"  # the trainer's way: write beside, rename over
        shutil.copy(bundled_model_path("int8"), fresh)
        os.replace(fresh, model)
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "buffers restart" in log(), 30, "model swap")  # the swap's last line
        assert log().count(f"reload: model {model} (bbnn-gtzan-augmented-fold0) replaces {model}") == 1
        assert "reload: the model changed; buffers restart" in log()
        assert "restart the daemon to apply it" not in log()
        still_classifying()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log()
    finally:
        proc.kill()
