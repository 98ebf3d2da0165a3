"""`genre-stream`: the command-line entry point.

Each command lives in the module that does its job; this file only wires them up.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from .. import __version__
from .options import engine_options, hop_option, load_engine, uncertainty_options

log = logging.getLogger("genre_stream")


def setup_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="genre-stream")
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-v info, -vv debug).")
def main(verbose: int) -> None:
    """Real-time music genre tagging with a BBNN model.

    \b
    genre-stream classify FILE_OR_DIR...   one-off classification
    genre-stream run --source SPEC...       the long-running tagger (MQTT / JSON lines)
    genre-stream batch DIR --out tags.jsonl an archive on a Ray cluster (resumable)
    """
    setup_logging(verbose)


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path, readable=False))  # reported per path
@engine_options
@hop_option
@click.option("-k", "--top-k", type=click.IntRange(1), default=3, show_default=True, help="How many genres to show per file.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line per file instead of text.")
@click.option("--windows", "with_windows", is_flag=True, help="Also give the per-window timeline of long files.")
@uncertainty_options
def classify(paths: tuple[Path, ...], model_path: Path | None, device: str, threads: int, batch_size: int, hop_seconds: float, top_k: int, as_json: bool, with_windows: bool,
             uncertain_threshold: float | None, uncertain_margin: float | None) -> None:
    """Classify audio FILES and DIRECTORIES (searched recursively).

    Reads wav, flac, ogg, mp3, au and aiff (anything ffmpeg decodes when named
    explicitly). A clip shorter than 30 s is looped to 30 s; a longer one is cut
    into 30 s windows every --hop seconds and the track's genre is the mean of the
    window probabilities. A file whose calibrated probabilities are too flat is
    marked "uncertain" (the best guess is still given). Files that cannot be read are reported on stderr and the
    exit status is 1; the others are still classified.
    """
    from ..model.calibration import UncertaintyRule
    from ..tracks.classify import ClassifyOptions, classify_paths

    engine = load_engine(model_path, device, threads, batch_size)
    uncertainty = UncertaintyRule.for_model(engine.info.calibration, uncertain_threshold, uncertain_margin)
    options = ClassifyOptions(hop_seconds=hop_seconds, top_k=min(top_k, len(engine.labels)), as_json=as_json, with_windows=with_windows,
                              uncertainty=uncertainty, model_choice=engine.chosen)
    failures = classify_paths(paths, engine, options, progress=True)
    if failures:
        sys.exit(1)


# Commands that live in their own modules register once the group exists.
from .batch import batch  # noqa: E402
from .devices import devices  # noqa: E402
from .history import history  # noqa: E402
from .library import library  # noqa: E402
from .run import config_group, run  # noqa: E402

main.add_command(run)
main.add_command(config_group)
main.add_command(devices)
main.add_command(library)
main.add_command(history)
main.add_command(batch)
