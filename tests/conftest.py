"""Shared test helpers: the repo and shared/ locations, running the CLIs as real processes."""

from __future__ import annotations

import importlib.util
import os
import pty
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

# Fixture modules, registered the pytest way: a test names their fixtures as arguments and imports
# from them only helpers (Broker, Subscriber, serve...). brokers: broker (each kind), any_broker,
# mosquitto; dashboards: served.
pytest_plugins = ["brokers", "dashboards"]

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_AUDIO = SHARED / "audio"
SEED_CHECKPOINTS = SHARED / "seed" / "checkpoints"

# Tests of the trainer import torch at module level and carry the `train` marker. Where the
# [train] extra is not installed (the runtime-only venv, which runs `-m "not train"`) their
# modules are not collected at all rather than failing to import; the header says so.
TRAIN_EXTRA = all(importlib.util.find_spec(name) for name in ("torch", "torchaudio", "librosa"))
TRAIN_MODULES = sorted(p.name for p in Path(__file__).parent.glob("test_*.py") if "pytestmark = pytest.mark.train" in p.read_text())
collect_ignore = [] if TRAIN_EXTRA else TRAIN_MODULES


# Modules that start daemons, brokers, browsers, ffmpeg or the trainer: seconds each, measured with
# --durations on the 2-core machine (~450 s of the whole suite). `pytest -m "not slow"` leaves
# the unit tests, about a minute.
SLOW_MODULES = frozenset({
    "test_trainer_pipeline.py", "test_trainer_ux.py", "test_export.py", "test_robust_watch.py",
    "test_sources_watch.py", "test_library.py", "test_frontend_parity.py", "test_daemon.py",
    "test_dashboard.py", "test_trainer_data.py", "test_model.py", "test_homeassistant.py",
    "test_mqtt_sink.py", "test_sources_mic.py", "test_sources_stream.py", "test_streaming.py",
    "test_quantize.py",
})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


def pytest_report_header() -> str:
    if TRAIN_EXTRA:
        return "[train] extra present: trainer tests included"
    return f"[train] extra absent (runtime-only install): {len(TRAIN_MODULES)} trainer test modules not collected"


def shared_path(relative: str) -> Path:
    """A file from ../shared, or skip: a user's clone has no shared/ folder beside it."""
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"needs ../shared/{relative} (present only in the project's workspace, not in a plain clone)")
    return path


def wait_until(cond, timeout: float = 20.0, what: str = "condition") -> None:
    """Poll ``cond`` until it holds; TimeoutError naming ``what`` after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise TimeoutError(what)
        time.sleep(0.02)


def music_like(seconds: float = 8.0, sr: int = 22050, seed: int = 0) -> np.ndarray:
    """Harmonic tones, noise bursts and a quiet passage: wide dynamic range in every band."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    y = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.1 * np.sin(2 * np.pi * 3520 * t * (1 + 0.01 * np.sin(t)))
    y += 0.05 * rng.standard_normal(t.size) * (np.sin(2 * np.pi * 2 * t) > 0.7)
    y[: sr // 2] *= 1e-3
    return y.astype(np.float32)


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    if extra:
        env.update(extra)
    return env


def run_cli(*args: str, module: str = "genre_stream", timeout: float = 300, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m genre_stream ...` (or `-m trainer`) as a user would, capturing output."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(env),
        cwd=cwd or REPO,
    )


@pytest.fixture(scope="session", autouse=True)
def _private_cache_home(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests (and the CLIs they run, onnxruntime among them) must not write the user's $XDG_CACHE_HOME."""
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))


@pytest.fixture(scope="session")
def engine():
    """The bundled default model, loaded once per test session."""
    from genre_stream.model.choice import open_engine

    return open_engine(threads=1)


def run_on_a_terminal(*args: str, module: str = "genre_stream", timeout: float = 300) -> tuple[int, str]:
    """Run a CLI with stdout and stderr on one pseudo-terminal, as in an interactive shell: (status, what it drew)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", module, *args], stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
                            env=cli_env(), cwd=REPO)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(timeout), b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")


def printed_above_a_bar(screen: str, text: str) -> bool:
    """``text`` shows on a line of its own on the terminal: no progress bar was left before it on that line."""
    line = next(line for line in screen.split("\n") if text in line)
    visible = line.rsplit("\x1b[K", 1)[-1]  # what stays on screen after the last erase
    return text in visible and not re.search(r"\[[#-]+\] \d+/\d+", visible[: visible.index(text)])
