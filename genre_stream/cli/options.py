"""Command-line options shared by the commands that run the model (classify, library)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from ..model.engine import Engine

from ..config import ModelConfig, PipelineConfig
from ..config.fields import declared
from ..config.model import BATCH_THREADS
from ..model.providers import PROVIDERS
from ..tracks import TRACK_HOP_SECONDS


def _declared_option(cls: type, name: str, param: str, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The option of a `run` setting that these commands share: its flags, help and range as declared there."""
    cli, allowed = declared(cls, name)
    if allowed is not None:
        kind = click.IntRange if isinstance(kwargs.get("type"), click.IntRange) else click.FloatRange
        kwargs["type"] = kind(allowed.lo, allowed.hi, min_open=allowed.lo_open, max_open=allowed.hi_open)
    shown = f" [default: {cli.default_text}]" if cli.default_text else ""
    return click.option(*cli.decls, param, help=cli.help + shown, **kwargs)


def model_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--model`` and ``--provider`` (``--device``, its old spelling, still works), as `run` declares them."""
    f = _declared_option(ModelConfig, "device", "device", type=click.Choice(PROVIDERS), default="auto", show_default=True)(f)
    return _declared_option(ModelConfig, "path", "model_path", type=click.Path(dir_okay=False, path_type=Path), default=None)(f)


def engine_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--model``, ``--provider``, ``--threads`` (a one-off job's default: ``BATCH_THREADS``) and ``--batch-size``."""
    f = click.option(
        "--batch-size",
        type=click.IntRange(1),
        default=1,
        show_default=True,
        help="Windows per inference call. Larger batches can be faster on big CPUs and GPUs but cost ~150 MB of memory per extra window.",
    )(f)
    f = _declared_option(ModelConfig, "threads", "threads", type=click.IntRange(0), default=BATCH_THREADS, show_default=True)(f)
    return model_options(f)


def hop_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--hop``: seconds between a long file's 30 s windows (classify, library scan; watch folders: ``track_hop_seconds``)."""
    return click.option("--hop", "hop_seconds", type=click.FloatRange(min=0.5), default=TRACK_HOP_SECONDS, show_default=True,
                        help="Seconds between the starts of 30 s windows in long files.")(f)


def uncertainty_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--uncertain-threshold`` and ``--uncertain-margin`` (None: the model's calibrated defaults), as `run` declares them."""
    f = _declared_option(PipelineConfig, "uncertain_margin", "uncertain_margin", default=None)(f)
    return _declared_option(PipelineConfig, "uncertain_threshold", "uncertain_threshold", default=None)(f)


def load_engine(model_path: Path | None, device: str, threads: int = BATCH_THREADS, batch_size: int = 1) -> Engine:
    """``model.choice.open_engine``, its error turned into a clean CLI error (exit 1, the message names the file)."""
    from ..model.choice import open_engine
    from ..model.session import ModelError

    try:
        return open_engine(model_path, device=device, threads=threads, batch_size=batch_size)
    except ModelError as exc:
        raise click.ClickException(str(exc)) from exc
