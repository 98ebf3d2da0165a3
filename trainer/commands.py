"""The trainer's data and training commands: prepare, train, evaluate, finetune, synth.

Kept apart from ``cli.py`` (which only registers them) so that each command's
options live beside the code they drive. Library errors become one-line CLI errors
naming the file or option; long steps show a progress bar on stderr.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click

T = TypeVar("T")


@contextlib.contextmanager
def _bar(items: Iterable[T], label: str) -> Iterator[Iterable[T]]:
    """A bar on stderr (a terminal only) that log lines, such as each epoch's summary, print above."""
    from genre_stream.common.progress import Progress

    items = list(items)
    bar = Progress(len(items), label)
    with bar.shown():
        yield _advancing(items, bar)


def _advancing(items: list[T], bar: Any) -> Iterator[T]:
    for item in items:
        yield item
        bar.advance()


def _errors():
    """Turn the trainer's own error types into ClickException (exit 1, no traceback)."""
    from .checkpoint import CheckpointError
    from .data import DataError
    from .distributed import TrainError
    from .evaluate import EvaluateError

    return (DataError, CheckpointError, EvaluateError, TrainError, ValueError)


TRAIN_DEFAULTS = {"epochs": 100, "lr": 0.01, "patience": 10, "accuracy_patience": 0, "normalization": "running"}
# Fine-tuning starts from trained features and usually has a few dozen clips per label: fewer
# epochs, a shorter patience, and a stop once validation accuracy stops improving (it saturates early
# on a small validation part while the loss keeps creeping down). The step stays at 0.01: a new
# decision layer at 0.001 had not converged after 6 epochs on the test set (held-out 0.8 against 1.0).
FINETUNE_DEFAULTS = {"epochs": 30, "lr": 0.01, "patience": 5, "accuracy_patience": 5, "normalization": "the base model's"}
NORMALIZATION_WORDS = ("seed", "running")  # --normalization; normalization_named() says which model normalisation each names


def _train_options(f=None, *, defaults: dict[str, Any] = TRAIN_DEFAULTS):
    if f is None:
        return lambda g: _train_options(g, defaults=defaults)
    options = [
        click.option("--normalization", type=click.Choice(NORMALIZATION_WORDS), default=None, show_default=defaults["normalization"],
                     help="The model's input normalisation: seed = each window on its own (the bundled models'); running = each frame once, "
                          "against the loudest frame of the window before it, so streaming reuses every frame (docs/TRAINING.md)."),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True, help="cuda when available under auto; one GPU per torchrun process."),
        click.option("--no-augment", is_flag=True, help="Train without SpecAugment."),
        click.option("--time-warp", type=click.IntRange(0), default=80, show_default=True, help="SpecAugment time warp W (frames, 0 = off)."),
        click.option("--time-mask", type=click.IntRange(0), default=100, show_default=True, help="SpecAugment time mask T (frames, 0 = off)."),
        click.option("--freq-mask", type=click.IntRange(0), default=27, show_default=True, help="SpecAugment frequency mask F (mel bands, 0 = off)."),
        click.option("--window-frames", type=click.IntRange(16), default=None, help="Training window in frames (default: the cache's; 647 = 30 s)."),
        click.option("--folds", type=click.IntRange(1, 10), default=1, show_default=True, help="Run this many of the 10 stratified 8/1/1 folds; reports mean and std."),
        click.option("--seed", type=int, default=0, show_default=True, help="Split, initialisation, shuffling and augmentation seed."),
        click.option("--accuracy-patience", type=click.IntRange(0), default=defaults["accuracy_patience"], show_default=True,
                     help="Also stop after this many epochs without a better validation accuracy (0 = off)."),
        click.option("--patience", type=click.IntRange(1), default=defaults["patience"], show_default=True, help="Early stopping: epochs without a better validation loss."),
        click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=defaults["lr"], show_default=True, help="Adam learning rate (halved after 3 epochs without improvement)."),
        click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True, help="Global batch size (split across torchrun processes)."),
        click.option("--epochs", type=click.IntRange(1), default=defaults["epochs"], show_default=True, help="Maximum epochs."),
    ]
    for option in options:
        f = option(f)
    return f


def normalization_named(word: str) -> str:
    """The normalisation a model records (genre_stream.audio.normalization) for a --normalization word.

    Imported here, not at the top: ``genre-trainer --help`` loads neither numpy nor torch.
    """
    from genre_stream.audio.normalization import RUNNING, SEED

    return {"seed": SEED, "running": RUNNING}[word]


def _config(epochs, batch_size, lr, patience, accuracy_patience, seed, folds, window_frames, freq_mask, time_mask, time_warp, no_augment, device,
            normalization):
    from .augment import SpecAugmentConfig
    from .train import TrainConfig

    augment = SpecAugmentConfig(0, 0, 0) if no_augment else SpecAugmentConfig(freq_mask, time_mask, time_warp)
    return TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, early_stop_patience=patience, accuracy_patience=accuracy_patience or None,
                       seed=seed, folds=folds, window_frames=window_frames, augment=augment, device=device,
                       normalization=normalization_named(normalization) if normalization else None)


def _is_rank0() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


def _report_run(out: Path, summary: dict) -> None:
    if not _is_rank0():
        return
    if "folds" in summary:
        click.echo(f"{out}: {summary['folds']} folds, test accuracy {summary['test_accuracy_mean']:.3f} +/- {summary['test_accuracy_std']:.3f}")
    else:
        click.echo(
            f"{out}: test accuracy {summary['test']['accuracy']:.3f} (val {summary['val']['accuracy']:.3f}, "
            f"train {summary['train']['accuracy']:.3f}), best epoch {summary['best_epoch']} of {summary['epochs_run']}"
        )


@click.command("prepare")
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Cache folder (created or updated).")
@click.option("--window-frames", type=click.IntRange(16), default=647, show_default=True, help="Clips shorter than this many frames are looped to it, as classify does.")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True, help="float16 stores dB and halves the cache.")
@click.option("--pitch-shift", "pitch_shift", default="", metavar="SEMITONES", help="Also cache pitch-shifted copies, e.g. --pitch-shift=-3,3 (the seed's augmentation).")
def prepare_cmd(data: Path, out: Path, window_frames: int, dtype: str, pitch_shift: str) -> None:
    """Decode labelled audio DATA once into a mel cache for training.

    DATA is a GTZAN download (genres/<label>/*.au), any folder with one sub-folder per
    label, or a CSV file of path,label rows. Re-running only decodes new or changed
    files; unreadable files are listed and skipped.
    """
    from genre_stream.audio.frontend import FrontendConfig

    from .augment import parse_pitch_shifts
    from .data import PrepareConfig, prepare

    try:
        config = PrepareConfig(FrontendConfig(window_frames=window_frames), dtype, parse_pitch_shifts(pitch_shift))
        report = prepare(data, out, config, progress=lambda clips: _progress_iter(clips, "decoding"))
    except _errors() as exc:
        raise click.ClickException(str(exc)) from exc
    for item in report.skipped:
        click.echo(f"skipped {item['path']}: {item['reason']}", err=True)
    click.echo(f"{out}: {report.decoded} decoded, {report.reused} unchanged, {report.removed} removed, {len(report.skipped)} skipped")


def _progress_iter(items: Iterable[T], label: str) -> Iterator[T]:
    with _bar(items, label) as bar:
        yield from bar


@click.command("train")
@click.argument("cache", type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Run folder; built in OUT.partial and renamed when done.")
@_train_options
def train_cmd(cache: Path, out: Path, **options) -> None:
    """Train BBNN on a prepared CACHE with the paper's recipe.

    Writes OUT/model.pt, metrics.json, curves.png and confusion.png. If a previous run
    with the same options was interrupted, rerunning the command resumes it. Works
    under torchrun for several processes, GPUs or machines.
    """
    from .run import train_run

    with _interruptible(out):
        summary = train_run(cache, out, _config(**options), progress=_bar if _is_rank0() else _no_bar)
    _report_run(out, summary)


@contextlib.contextmanager
def _interruptible(out: Path) -> Iterator[None]:
    """Library errors and Ctrl-C (or SIGTERM) as one message: what is kept and how to go on."""
    import signal

    from .train import Interrupted

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    except _errors() as exc:
        raise click.ClickException(str(exc)) from exc
    except Interrupted as exc:
        done = exc.state.epoch
        best = (f"; the best epoch so far ({exc.state.best_epoch}, val loss {exc.state.best_loss:.4f}) is in {exc.best}"
                if exc.best else "")
        raise click.ClickException(f"interrupted after {done} finished epoch(s){best}; run the same command again to resume "
                                   f"from epoch {done + 1} (the state is kept in {out}.partial)") from None
    except KeyboardInterrupt:
        raise click.ClickException(f"interrupted; run the same command again to resume from the last finished epoch (kept in {out}.partial)") from None
    finally:
        signal.signal(signal.SIGTERM, previous)


def _no_bar(items, label):
    return contextlib.nullcontext(items)


def _precision(value: float) -> str:
    """A precision for humans: "-" when nothing was answered (the value is nan)."""
    return "-" if math.isnan(value) else f"{value:.2f}"


@click.command("evaluate")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None, help="Folder for metrics.json, confusion.png and reliability.png.")
@click.option("--hop", "hop_seconds", type=click.FloatRange(min=0.5), default=10.0, show_default=True, help="Seconds between windows of long clips (as in classify).")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
def evaluate_cmd(model: Path, data: Path, out: Path | None, hop_seconds: float, as_json: bool) -> None:
    """Accuracy, per-class P/R/F1, confusion and calibration (ECE) of MODEL (.pt checkpoint or .onnx export) on labelled DATA (cache or audio).

    An ONNX export is scored with its calibration applied (as classify does); the
    "uncertain" line is the model's own rule: tracks answered and their precision.
    """
    from .evaluate import evaluate

    try:
        report = evaluate(model, data, out, hop_seconds, progress=_progress_iter)
    except _errors() as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(report))
        return
    click.echo(f"{model}: accuracy {report['accuracy']:.3f}, loss {report['loss']:.4f}, macro F1 {report['macro_f1']:.3f} on {report['n']} clips")
    u = report["uncertain"]
    click.echo(f"  calibration: ECE {report['ece']:.3f} (10 bins); uncertain rule (top < {u['threshold']:.2f} or margin < {u['margin']:.2f}): "
               f"answers {u['coverage']:.0%} of clips, precision {u['precision']:.3f}")
    for option, key in (("--uncertain-threshold", "by_threshold"), ("--uncertain-margin", "by_margin")):
        points = ", ".join(f"{p[key.removeprefix('by_')]:.2f}: {p['coverage']:.0%}/{_precision(p['precision'])}" for p in u[key])
        click.echo(f"  {option} -> answered/precision: {points}")
    for label, row in report["per_class"].items():
        if row["support"]:
            click.echo(f"  {label:>14}: precision {row['precision']:.3f} recall {row['recall']:.3f} f1 {row['f1']:.3f} ({row['support']})")


@click.command("finetune")
@click.argument("checkpoint")
@click.argument("data", required=False, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Run folder, as for train.")
@click.option("--freeze", type=click.Choice(["all", "partial", "none"]), default="partial", show_default=True, help="Backbone layers kept fixed: all, all but the last block, or none.")
@click.option("--library", "library_db", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Learn the corrections (`genre-stream library label`) of this library database instead of DATA; "
                   "--lr, --batch-size and --window-frames then default to the corrections recipe, not to the values shown.")
@click.option("--steps", type=click.IntRange(1), default=None, help="With --library: training steps (default: the measured recipe, trainer/corrections.py).")
@_train_options(defaults=FINETUNE_DEFAULTS)
@click.pass_context
def finetune_cmd(ctx: click.Context, checkpoint: str, data: Path | None, out: Path, freeze: str, library_db: Path | None, steps: int | None, **options) -> None:
    """Fine-tune CHECKPOINT ('default' = the bundled GTZAN model) to the labels of DATA, or learn a library's corrections.

    DATA is a prepared cache, or audio that is prepared first into OUT.cache with the
    checkpoint's frontend (kept, so reruns decode only what changed).

    With --library DB the model keeps its genres and learns the tracks labelled in DB
    (a small, partial fine-tune; see docs/MODEL_CARD.md for what it buys); OUT gets
    model.pt, model.onnx (fp32, with the base model's calibration) and report.json.
    """
    if library_db is not None:
        _finetune_library(ctx, checkpoint, data, out, freeze, library_db, steps, options)
        return
    if data is None or steps is not None:
        raise click.UsageError("give DATA, or --library DB (--steps works only with --library)")
    from genre_stream.audio.frontend import FrontendConfig

    from .checkpoint import load_checkpoint
    from .data import MANIFEST, PrepareConfig, prepare
    from .finetune import finetune_run, resolve_checkpoint

    with _interruptible(out):
        cache = data
        if not (data / MANIFEST).is_file():
            _, info, _ = load_checkpoint(resolve_checkpoint(checkpoint))
            cache = out.with_name(out.name + ".cache")
            frontend = FrontendConfig.from_dict({**info.frontend.to_dict(), "window_frames": options["window_frames"] or info.frontend.window_frames})
            prepare(data, cache, PrepareConfig(frontend=frontend), progress=lambda clips: _progress_iter(clips, "decoding"))
        summary = finetune_run(checkpoint, cache, out, freeze, _config(**options), progress=_bar if _is_rank0() else _no_bar)
    _report_run(out, summary)


# train options that mean the same for --library (given explicitly, they replace CorrectionConfig's defaults)
_LIBRARY_OPTIONS = {"lr", "batch_size", "seed", "window_frames", "freq_mask", "time_mask", "time_warp", "no_augment"}


def _finetune_library(ctx: click.Context, checkpoint: str, data: Path | None, out: Path, freeze: str, library_db: Path,
                      steps: int | None, options: dict) -> None:
    from dataclasses import replace

    from .augment import SpecAugmentConfig
    from .corrections import CorrectionConfig, finetune_library

    given = {k for k in options if ctx.get_parameter_source(k) is not click.core.ParameterSource.DEFAULT}
    if data is not None:
        raise click.UsageError("--library takes no DATA: the labelled tracks come from the database")
    if given - _LIBRARY_OPTIONS:
        raise click.UsageError(f"not used with --library: {', '.join('--' + k.replace('_', '-') for k in sorted(given - _LIBRARY_OPTIONS))}")
    config = CorrectionConfig(freeze=freeze)
    changes = {k: options[k] for k in given & {"lr", "batch_size", "seed", "window_frames"}}
    if steps is not None:
        changes["steps"] = steps
    if given & {"freq_mask", "time_mask", "time_warp", "no_augment"}:
        changes["augment"] = SpecAugmentConfig(0, 0, 0) if options["no_augment"] else SpecAugmentConfig(options["freq_mask"], options["time_mask"], options["time_warp"])
    try:
        config = replace(config, **changes)
        with click.progressbar(length=config.steps, label="learning corrections", file=sys.stderr) as bar:
            report = finetune_library(checkpoint, library_db, out, config, on_step=lambda step, loss: bar.update(1))
    except _errors() as exc:
        raise click.ClickException(str(exc)) from exc
    for skipped in report["skipped"]:
        click.echo(f"skipped {skipped['path']}: {skipped['reason']}", err=True)
    click.echo(f"{report['model']}: learnt {len(report['labelled'])} labelled tracks (distilled on {report['unlabelled_tracks']} others); "
               f"labelled tracks right before/after: {report['labelled_accuracy_before']:.2f}/{report['labelled_accuracy_after']:.2f}")


@click.command("synth")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--classes", type=click.IntRange(2, 4), default=3, show_default=True)
@click.option("--clips", type=click.IntRange(1), default=12, show_default=True, help="Clips per class.")
@click.option("--seconds", type=click.FloatRange(min=0.5), default=3.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def synth_cmd(out: Path, classes: int, clips: int, seconds: float, seed: int) -> None:
    """Write a small synthetic labelled set (GTZAN layout) to OUT, for trying the trainer without GTZAN."""
    from .synthset import make_dataset

    paths = make_dataset(out, classes, clips, seconds, seed)
    click.echo(f"wrote {len(paths)} clips to {out}")
