"""Shared test helpers: the repo and shared/ locations, running the CLIs as real processes."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

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
    """`--model auto` caches its choice under $XDG_CACHE_HOME: tests (and the CLIs they run) must not write the user's."""
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))


@pytest.fixture(scope="session")
def engine():
    """The bundled default model, loaded once per test session."""
    from genre_stream.engine import Engine

    return Engine(threads=1)
