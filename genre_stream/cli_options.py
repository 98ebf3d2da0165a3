"""Command-line options shared by the commands that run the model (classify, library)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .config import ModelConfig, PipelineConfig
from .providers import PROVIDERS
from .config.fields import declared


def _declared_option(cls: type, name: str, param: str, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The option of a `run` setting that these commands share: its flags, help and range as declared there."""
    cli, allowed = declared(cls, name)
    if allowed is not None:
        kwargs["type"] = click.FloatRange(allowed.lo, allowed.hi, min_open=allowed.lo_open, max_open=allowed.hi_open)
    shown = f" [default: {cli.default_text}]" if cli.default_text else ""
    return click.option(*cli.decls, param, help=cli.help + shown, **kwargs)


def model_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--model`` and ``--provider`` (``--device``, its old spelling, still works)."""
    f = _declared_option(ModelConfig, "device", "device", type=click.Choice(PROVIDERS), default="auto", show_default=True)(f)
    return click.option(
        "--model",
        "model_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="An ONNX model exported by `genre-trainer export`, or `fp32` / `int8` for the bundled GTZAN exports (default: auto, the bundled int8 on a CPU when its weights are 7-bit and it meets its accuracy bar, else fp32; a fixed rule, see docs/QUANTIZATION.md).",
    )(f)


def engine_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--model``, ``--provider``, ``--threads`` and ``--batch-size``."""
    f = click.option(
        "--batch-size",
        type=click.IntRange(1),
        default=1,
        show_default=True,
        help="Windows per inference call. Larger batches can be faster on big CPUs and GPUs but cost ~150 MB of memory per extra window.",
    )(f)
    f = click.option("--threads", type=click.IntRange(0), default=0, show_default=True, help="CPU inference threads (0 = onnxruntime decides).")(f)
    return model_options(f)


def uncertainty_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--uncertain-threshold`` and ``--uncertain-margin`` (None: the model's calibrated defaults), as `run` declares them."""
    f = _declared_option(PipelineConfig, "uncertain_margin", "uncertain_margin", default=None)(f)
    return _declared_option(PipelineConfig, "uncertain_threshold", "uncertain_threshold", default=None)(f)


def load_engine(model_path: Path | None, device: str, threads: int = 0, batch_size: int = 1):
    """Build the engine or turn its error into a clean CLI error (exit 1, message names the file)."""
    from .engine import Engine, ModelError

    try:
        return Engine(model_path, device=device, threads=threads, batch_size=batch_size)
    except ModelError as exc:
        raise click.ClickException(str(exc)) from exc
