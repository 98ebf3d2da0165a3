"""`genre-trainer`: import, train, evaluate, fine-tune and export BBNN models."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from .commands import evaluate_cmd, finetune_cmd, prepare_cmd, synth_cmd, train_cmd

log = logging.getLogger("trainer")


def _setup_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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
def import_keras(checkpoint: Path, out: Path) -> None:
    """Convert a seed Keras HDF5 CHECKPOINT (no TensorFlow needed) into a genre-stream checkpoint."""
    from genre_stream.modelinfo import ModelInfo

    from .checkpoint import save_checkpoint
    from .keras_import import KerasImportError, load_keras_bbnn, sha256_file

    try:
        model, labels = load_keras_bbnn(checkpoint)
    except KerasImportError as exc:
        raise click.ClickException(str(exc)) from exc
    info = ModelInfo(
        labels=labels,
        model_id=checkpoint.stem,
        provenance={"source": checkpoint.name, "sha256": sha256_file(checkpoint), "importer": "genre-trainer import-keras"},
    )
    save_checkpoint(out, model, info)
    click.echo(f"wrote {out} ({len(labels)} labels: {', '.join(labels)})")


if __name__ == "__main__":
    main()
