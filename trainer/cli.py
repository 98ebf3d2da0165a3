"""`genre-trainer`: import, train, evaluate, fine-tune and export BBNN models."""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path

import click

from genre_stream import __version__

from .commands import NORMALIZATION_WORDS, evaluate_cmd, finetune_cmd, normalization_named, prepare_cmd, synth_cmd, train_cmd

log = logging.getLogger("trainer")


def _setup_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _versions() -> str:
    """The package version and the versions that decide what a model file is (read without importing torch)."""
    from importlib.metadata import PackageNotFoundError, version

    parts = []
    for dist in ("torch", "onnxruntime"):
        try:
            parts.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            parts.append(f"{dist} not installed")
    return f"{__version__} ({', '.join(parts)})"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(_versions(), prog_name="genre-trainer")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """Produce models for genre-stream: import the seed checkpoints, train, evaluate, export to ONNX."""
    _setup_logging(verbose)


main.add_command(prepare_cmd)
main.add_command(train_cmd)
main.add_command(evaluate_cmd)
main.add_command(finetune_cmd)
main.add_command(synth_cmd)


@main.command("import-keras")
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Checkpoint file to write (.pt).")
@click.option("--normalization", type=click.Choice(NORMALIZATION_WORDS), default="seed", show_default=True,
              help="The input normalisation the imported network will be fed: seed = the one it was trained with (per window); "
                   "running = each frame against the loudest of the 30 s ending at it (the same on a 30 s clip, and streaming "
                   "never recomputes a window; the bundled models use it, see docs/MODEL_CARD.md).")
def import_keras(checkpoint: Path, out: Path, normalization: str) -> None:
    """Convert a seed Keras HDF5 CHECKPOINT (no TensorFlow needed) into a genre-stream checkpoint."""
    from genre_stream.common.fsutil import sha256_file
    from genre_stream.model.info import ModelInfo

    from .checkpoint import save_checkpoint
    from .keras_import import KerasImportError, load_keras_bbnn

    try:
        model, labels = load_keras_bbnn(checkpoint)
    except KerasImportError as exc:
        raise click.ClickException(str(exc)) from exc
    info = ModelInfo(
        labels=labels,
        model_id=checkpoint.stem,
        normalization=normalization_named(normalization),
        provenance={"source": checkpoint.name, "sha256": sha256_file(checkpoint), "importer": "genre-trainer import-keras"},
    )
    save_checkpoint(out, model, info)
    click.echo(f"wrote {out} ({len(labels)} labels: {', '.join(labels)})")


@main.command("export")
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="ONNX file to write.")
@click.option("--quantize", type=click.Choice(["none", "int8", "fp16"]), default="none", show_default=True, help="none = fp32; int8 for CPUs and edge boards; fp16 for GPUs.")
@click.option("--calibration", type=click.Path(exists=True, file_okay=False, path_type=Path), help="Folder of music for int8 calibration and the check (files alternate between the two). Default: the project's synthetic pieces.")
@click.option("--calibration-audio", multiple=True, type=click.Path(exists=True, path_type=Path), help="int8: calibrate on every window of this music (file or folder, repeatable), cut as classify cuts it; the check then uses --test-audio or synthetic pieces. Default: the project's synthetic pieces.")
@click.option("--test-audio", type=click.Path(exists=True, file_okay=False, path_type=Path), help="Folder of music to check the export on (every file at many offsets), instead of held-out calibration material.")
@click.option("--bias-correction/--no-bias-correction", default=True, show_default=True, help="int8: remove each quantised conv's mean output error on the calibration windows (graph order).")
@click.option("--float-head/--quantized-head", default=True, show_default=True, help="int8: keep the head (mean, dense layer, softmax) in float, as the bundled int8 is: finer probabilities, and the streaming pack needs it.")
@click.option("--keep-float", multiple=True, help="int8: also leave nodes whose name contains this text in float (repeatable).")
@click.option("--calibration-windows", type=click.IntRange(1), default=96, show_default=True, help="30 s windows used to calibrate int8 (synthetic pieces or --calibration; --calibration-audio uses all of its windows).")
@click.option("--test-windows", type=click.IntRange(1), default=24, show_default=True, help="Separate windows the export is checked on.")
@click.option("--recipe", type=click.Choice(["full", "plain"]), default="full", show_default=True, help="int8: full = fold BatchNorm + equalise channels first; plain = quantise the export as is.")
@click.option("--weight-bits", type=click.Choice(["7", "8"]), default="7", show_default=True,
              help="int8: 7 keeps weights in [-64, 64] so every CPU computes the same answers; 8 uses the full range, "
                   "which x86 CPUs without VNNI (AVX2 only) get wrong (docs/QUANTIZATION.md).")
@click.option("--force", is_flag=True, help="Write an int8 model even if it misses the accuracy bar.")
def export(
    checkpoint: Path,
    out: Path,
    quantize: str,
    calibration: Path | None,
    calibration_audio: tuple[Path, ...],
    test_audio: Path | None,
    bias_correction: bool,
    float_head: bool,
    keep_float: tuple[str, ...],
    calibration_windows: int,
    test_windows: int,
    recipe: str,
    weight_bits: str,
    force: bool,
) -> None:
    """Export CHECKPOINT to ONNX and report its parity with the PyTorch model.

    fp32 must match PyTorch within 1e-4 (probability); int8 must keep top-1 agreement >= 0.97, mean |dp| <= 0.03
    and max |dp| <= 0.15 on the test windows, or nothing is written (unless --force).
    """
    from genre_stream.audio.frontend import MelFrontend
    from genre_stream.common.progress import Progress

    from .checkpoint import CheckpointError, load_checkpoint
    from .onnx_meta import save_atomic
    from .frontend_torch import TorchMelFrontend
    from .int8_windows import WindowSets, audio_windows, folder_sets, folder_test_windows, synthetic_sets
    from .quantize import FP32_PARITY, Int8Config, build_export

    try:
        model, info, _ = load_checkpoint(checkpoint)
    except CheckpointError as exc:
        raise click.ClickException(str(exc)) from exc
    if calibration and calibration_audio:
        raise click.UsageError("give either --calibration (a folder split into calibration and test files) or --calibration-audio, not both")
    frontend = TorchMelFrontend(info.frontend)
    norm = info.normalization  # windows are normalised as the model's inputs are; the export's metadata keeps saying which
    n_cal = calibration_windows if quantize == "int8" else 0
    real_cal = bool(calibration_audio) and quantize == "int8"
    click.echo(f"making {'real-music' if real_cal else n_cal} calibration and {test_windows} test windows ...", err=True)
    try:
        if real_cal:
            cal, cal_source = audio_windows(list(calibration_audio), MelFrontend(info.frontend), normalization=norm)
            test = synthetic_sets(frontend, 0, 0 if test_audio else test_windows, norm).test
            sets = WindowSets(cal, test, f"calibration: {cal_source}" + ("" if test_audio else f"; test: {len(test)} synthetic pieces"))
        elif calibration:
            sets = folder_sets(calibration, frontend, max(n_cal, 1), test_windows, norm)
        else:
            sets = synthetic_sets(frontend, n_cal, 0 if test_audio else test_windows, norm)
        if test_audio:
            sets.test, test_source = folder_test_windows(test_audio, frontend, test_windows, norm)
            sets.source += f"; test: {test_source}"
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"windows: {len(sets.calibration)} calibration, {len(sets.test)} test ({sets.source})")
    bar = Progress(len(sets.calibration) if quantize == "int8" else 0, "calibrating int8")
    try:
        with bar.shown() if quantize == "int8" else contextlib.nullcontext():
            result = build_export(model, info, quantize, sets.test, sets.calibration, Int8Config(recipe=recipe, float_head=float_head, keep_float=keep_float,
                                                                                          bias_correction=bias_correction, weight_bits=int(weight_bits)),
                                  sets.source, on_window=bar.advance)
    except (RuntimeError, ValueError) as exc:
        raise click.ClickException(f"{out}: not written: {exc}") from exc
    if quantize == "none":
        click.echo(f"fp32 parity with PyTorch: max |dp| {result.max_abs_parity:.2e} (limit {FP32_PARITY:g}); {result.test.summary()}")
        if result.max_abs_parity is None or result.max_abs_parity > FP32_PARITY:
            raise click.ClickException(f"{out}: not written: fp32 export differs from PyTorch by {result.max_abs_parity:.2e} > {FP32_PARITY:g}")
    elif quantize == "int8":
        assert result.calibration is not None
        click.echo(f"int8 vs PyTorch on calibration windows: {result.calibration.summary()}")
        click.echo(f"int8 vs PyTorch on test windows:        {result.test.summary()}")
        misses = result.test.shortfalls()
        if misses and not force:
            raise click.ClickException(f"{out}: not written: int8 model misses the accuracy bar ({'; '.join(misses)}); use --force to write it anyway")
        if misses:
            click.echo(f"warning: writing despite missing the accuracy bar ({'; '.join(misses)})", err=True)
    else:
        click.echo(f"fp16 vs PyTorch: {result.test.summary()} ({'; '.join(result.notes)})")
    save_atomic(result.model, out)
    click.echo(f"wrote {out}")
    if quantize == "none":
        from genre_stream.model.streampack import stream_pack_path

        from .stream_export import save_stream_pack

        pack = save_stream_pack(model, info, stream_pack_path(out))
        click.echo(f"wrote {pack} (the stages the daemon streams live windows with)")
    elif quantize == "int8":
        _cut_int8_pack(Path(out))


def _cut_int8_pack(out: Path) -> None:
    """Write the int8 export's streaming pack beside it, or say why there is none (the model works either way)."""
    from genre_stream.model.streampack import stream_pack_path

    from .stream_cut import save_int8_stream_pack

    pack = stream_pack_path(out)
    try:
        save_int8_stream_pack(out, pack)
    except (ValueError, RuntimeError) as exc:
        if pack.exists():  # the pack of the file just replaced: it would only be refused at every start
            pack.unlink()
            click.echo(f"removed {pack}: it was cut from the model {out.name} replaced", err=True)
        click.echo(f"no streaming pack for {out.name}: {exc}. The daemon classifies whole windows with it.", err=True)
        return
    click.echo(f"wrote {pack} (the stages the daemon streams live windows with)")


if __name__ == "__main__":
    main()
