"""The tagging runtime never imports the training stack.

`pip install genre-stream` brings no torch, torchaudio or librosa (the [train] extra
does), so every runtime command must work with them absent. Each command runs in a
fresh interpreter in which importing any of them raises ImportError, and which
reports at exit whether one was loaded anyway; this holds in the full venv too,
where they are installed.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, cli_env

FORBIDDEN = ("torch", "torchaudio", "librosa", "numba", "onnx", "trainer")
DEMO = REPO / "examples" / "demo.wav"

_RUNNER = """
import atexit, importlib.abc, json, sys
FORBIDDEN = set({forbidden!r})

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in FORBIDDEN:
            raise ImportError(f"runtime imported {{name}}")
        return None

sys.meta_path.insert(0, Block())
atexit.register(lambda: sys.stderr.write("LOADED " + json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & FORBIDDEN)) + "\\n"))
sys.argv = ["genre-stream", *{args!r}]
from genre_stream.cli.main import main
main()
"""


def _run(args: list[str], tmp_path: Path, forbidden: tuple[str, ...] = FORBIDDEN) -> subprocess.CompletedProcess[str]:
    code = _RUNNER.format(forbidden=forbidden, args=args)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=cli_env(), cwd=tmp_path)


def _loaded(proc: subprocess.CompletedProcess[str]) -> list[str]:
    lines = [line for line in proc.stderr.splitlines() if line.startswith("LOADED ")]
    assert lines, proc.stderr
    return json.loads(lines[-1][len("LOADED "):])


@pytest.mark.parametrize(
    "args",
    [
        ["classify", "--json", str(DEMO)],
        ["classify", "--model", "int8", str(DEMO)],
        ["run", "--fast", "--source", f"demo=file:{DEMO}", "--jsonl", "-", "--state-dir", "state"],
        ["history", "--state-dir", "state", "--format", "json"],
        ["library", "scan", "--db", "lib.sqlite", str(DEMO.parent)],
        ["config", "check", str(REPO / "examples" / "config.toml")],
        ["devices"],
    ],
    ids=["classify", "classify-int8", "run", "history", "library-scan", "config-check", "devices"],
)
def test_runtime_commands_never_import_the_training_stack(args: list[str], tmp_path: Path) -> None:
    proc = _run(args, tmp_path)
    assert "runtime imported" not in proc.stderr, proc.stderr[-2000:]
    assert _loaded(proc) == []
    if args[0] in {"classify", "run", "config"}:
        assert proc.returncode == 0, proc.stderr[-2000:]
    if args[0] == "classify" and "--json" in args:
        result = json.loads(proc.stdout.splitlines()[0])
        assert result["genre"] and 0 < result["confidence"] <= 1


def test_config_check_loads_no_inference_stack(tmp_path: Path) -> None:
    """Checking a TOML file needs neither onnxruntime nor the MQTT, HTTP or clustering libraries."""
    heavy = (*FORBIDDEN, "onnxruntime", "paho", "aiohttp", "sklearn")
    proc = _run(["config", "check", str(REPO / "examples" / "genre-stream.toml")], tmp_path, heavy)
    assert proc.returncode == 0 and "runtime imported" not in proc.stderr, proc.stderr[-2000:]
    assert _loaded(proc) == []


def test_ray_is_only_the_cluster_extra(tmp_path: Path) -> None:
    """Without Ray every other command works and `batch` says how to get it (a clean error, not a traceback)."""
    without_ray = (*FORBIDDEN, "ray")
    proc = _run(["classify", "--json", str(DEMO)], tmp_path, without_ray)
    assert proc.returncode == 0 and "runtime imported" not in proc.stderr, proc.stderr[-2000:]
    proc = _run(["batch", "--help"], tmp_path, without_ray)
    assert proc.returncode == 0 and "--address" in proc.stdout, proc.stderr[-2000:]
    proc = _run(["batch", str(DEMO), "--out", "tags.jsonl"], tmp_path, without_ray)
    assert proc.returncode == 1 and "pip install 'genre-stream[cluster]'" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and _loaded(proc) == []


# What the daemon may import at run time, and why: it supervises; compose.py names the parts.
DAEMON_IMPORTS = {
    "genre_stream": "the version in the start banner",
    "genre_stream.common.backoff": "restarting a crashed source",
    "genre_stream.app.compose": "the composition",
    "genre_stream.app.systemd": "sd_notify",
    "genre_stream.config": "its configuration and ConfigError",
    "genre_stream.model.session": "ModelError only (a reload keeps the running model)",
    "genre_stream.model.choice": "open_engine, as every command opens its model; the model file's stamp (a reload sees it replaced)",
    "genre_stream.sinks": "the Sink protocol, Fanout, SourceInfo, SourceAvailability",
    "genre_stream.sinks.messages": "the payload contract",
    "genre_stream.sources": "the Source protocol, its items, make_sources",
}


def test_the_daemon_imports_only_protocols_and_the_composition() -> None:
    """daemon.py knows no concrete sink, listener, tagger or library: a new output is wired in compose.py."""
    import ast

    tree = ast.parse((REPO / "genre_stream" / "app" / "daemon.py").read_text())
    type_only = {id(node) for stmt in tree.body if isinstance(stmt, ast.If) and "TYPE_CHECKING" in ast.unparse(stmt.test)
                 for node in ast.walk(stmt)}
    imported: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level and id(node) not in type_only:
            imported.setdefault(_resolve(node, "genre_stream.app"), set()).update(alias.name for alias in node.names)
        assert not (isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("genre_stream")), ast.unparse(node)
    assert set(imported) <= set(DAEMON_IMPORTS), sorted(set(imported) - set(DAEMON_IMPORTS))
    assert imported["genre_stream.model.session"] == {"ModelError"}


def test_the_daemon_streams_windows_without_the_training_stack(tmp_path: Path) -> None:
    """Streaming inference (stage graphs + numpy head) runs on onnxruntime alone: no torch, no onnx."""
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(0)
    t = np.arange(45 * 22050) / 22050
    audio = 0.1 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 0.3 * t)) + 0.01 * rng.standard_normal(t.size)
    sf.write(tmp_path / "long.wav", audio.astype(np.float32), 22050)
    proc = _run(["-v", "run", "--fast", "--model", "fp32", "--source", f"long=file:{tmp_path / 'long.wav'}",
                 "--jsonl", "-", "--state-dir", "state"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "streaming inference on" in proc.stderr, proc.stderr[-2000:]
    assert _loaded(proc) == []
    assert sum(line.startswith('{"source":"long"') for line in proc.stdout.splitlines()) >= 7  # 10, 15, ... 45 s


# Modules outside genre_stream/config/ that the configuration may import: leaves that import no
# other genre_stream module (checked below too), so settings ownership runs one way only.
CONFIG_LEAF_IMPORTS = {
    "genre_stream.model.bundled": "the bundled model names (auto / fp32 / int8) a model.path may give; stdlib only",
    "genre_stream.model.providers": "the execution provider names of model.device; stdlib only",
    "genre_stream.common.redact": "masking a URL's password in messages and `config show`; stdlib only",
    "genre_stream.tracks": "TRACK_HOP_SECONDS, the one hop of whole-track windows (default of track_hop_seconds); stdlib only",
    "genre_stream.audio.sanitize": "SILENCE_DBFS, the one silence level (default of pipeline.silence_dbfs); numpy and stdlib only",
}


def _resolve(node: "ast.ImportFrom", package: str) -> str:
    """The absolute module a relative ``from ... import`` in ``package`` names."""
    base = package.split(".")[: len(package.split(".")) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _package_imports(path: Path, package: str) -> set[str]:
    """The genre_stream modules ``path`` (a module of ``package``) imports, relative imports resolved."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                module = _resolve(node, package)
                names = [module] if node.module else [f"{module}.{alias.name}" for alias in node.names]
            else:
                names = [node.module or ""]
            found.update(n for n in names if n.split(".")[0] == "genre_stream")
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "genre_stream")
    return found


def test_the_configuration_imports_no_feature() -> None:
    """Features import their settings from genre_stream.config; config imports no sink, source, pipeline or dashboard."""
    config_dir = REPO / "genre_stream" / "config"
    modules = sorted(config_dir.glob("*.py"))
    assert {p.stem for p in modules} >= {"__init__", "errors", "fields", "daemon", "load", "mqtt", "pipeline", "http"}
    for path in modules:
        outside = {m for m in _package_imports(path, "genre_stream.config")
                   if m != "genre_stream.config" and not m.startswith("genre_stream.config.")}
        assert outside <= set(CONFIG_LEAF_IMPORTS), (path.name, sorted(outside - set(CONFIG_LEAF_IMPORTS)))
    for leaf in CONFIG_LEAF_IMPORTS:
        parts = leaf.split(".")
        path = REPO.joinpath(*parts).with_suffix(".py")
        package = leaf if not path.exists() else ".".join(parts[:-1])
        path = path if path.exists() else REPO.joinpath(*parts, "__init__.py")
        assert _package_imports(path, package) == set(), (leaf, "is no longer a leaf")
