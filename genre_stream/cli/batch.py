"""`genre-stream batch`: tag an archive on a Ray cluster (docs/CLUSTER.md).

A command of its own rather than a ``--ray`` option on ``classify`` / ``library scan``: an archive
job needs a results file that is also its record of what is done (``classify`` prints to stdout,
which no re-run can read back), failure semantics of a cluster (a dead node's files are retried,
not recorded as bad), and progress in audio hours; and ``classify`` / ``library scan`` stay exactly
as they are. ``--db`` writes the library index through ``library scan``'s own planning and commit,
so `library cluster`, `similar` and `ls` work on it as on a local scan.

Only argument handling and presentation live here; the work is in ``genre_stream.cluster``, which
imports Ray (the ``[cluster]`` extra) only when the command runs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .library import sigterm_as_interrupt
from .options import hop_option, load_engine, model_options, uncertainty_options


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--address", default="auto", show_default=True,
              help="The Ray cluster: HOST:PORT of its head (the address `ray start --head` printed), 'auto' (RAY_ADDRESS, "
                   "else the cluster `ray start` began on this machine) or 'local' (a Ray of this machine alone).")
@click.option("-o", "--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="JSON-lines results, one `classify --json` object per file (plus size, mtime_ns, hash); "
                   "also the record of what is done: a re-run tags only what is missing.")
@click.option("--db", "db_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the library index instead (as `library scan --db`); it is then the record of what is done.")
@model_options
@hop_option
@click.option("-k", "--top-k", type=click.IntRange(1), default=3, show_default=True, help="Genres in each line's `top`.")
@click.option("--windows", "with_windows", is_flag=True, help="Also write each file's windows and segments (as `classify --windows`).")
@uncertainty_options
@click.option("--retries", type=click.IntRange(0), default=3, show_default=True,
              help="Times Ray re-runs a file whose worker process or node died, on any node.")
@click.option("--max-in-flight", type=click.IntRange(0), default=0,
              help="Files submitted at once (0: twice the cluster's CPUs, followed as nodes come and go).")
@click.option("--retry-errors", is_flag=True, help="Try unchanged files that were bad in an earlier run again.")
@click.option("--status-every", type=click.FloatRange(0), default=30.0, show_default=True,
              help="Seconds between status lines on stderr when it is not a terminal (a terminal gets a bar); 0: none.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def batch(paths: tuple[Path, ...], address: str, out_path: Path | None, db_path: Path | None, model_path: Path | None, device: str,
          hop_seconds: float, top_k: int, with_windows: bool, uncertain_threshold: float | None, uncertain_margin: float | None,
          retries: int, max_in_flight: int, retry_errors: bool, status_every: float, as_json: bool) -> None:
    """Tag every audio file under PATHS on a Ray cluster, resumably (docs/CLUSTER.md).

    Run it on a node of the cluster (usually the head); every node needs the same genre-stream
    (`pip install "genre-stream[cluster]"`) and must see the files at the same paths. Results are
    written as they arrive; Ctrl-C or SIGTERM stops the job and the next run continues with the files
    not yet written. A file whose node died is re-run elsewhere; a bad file is one error line and
    makes the exit status 1, as in `classify`.
    """
    from ..cluster.batch import run_index, run_jsonl
    from ..cluster.progress import JobProgress
    from ..cluster.runner import ClusterError, ClusterSettings
    from ..cluster.worker import WorkerSpec, worker_model
    from ..library.db import LibraryDB, LibraryError
    from ..library.scan import ScanConfig
    from ..model.calibration import UncertaintyRule
    from ..model.session import ModelError
    from ..tracks.classify import ClassifyOptions

    if (out_path is None) == (db_path is None):
        raise click.UsageError("give exactly one of --out FILE.jsonl (JSON lines) and --db FILE (the library index)")
    engine = load_engine(model_path, device)  # the driver's copy: labels, calibration, the model id every node must match
    try:
        model = worker_model(model_path, device)
    except ModelError as exc:
        raise click.ClickException(str(exc)) from exc
    settings = ClusterSettings(address, retries, max_in_flight)
    progress = JobProgress("tagging", status_every=status_every)
    try:
        with sigterm_as_interrupt():
            if out_path is not None:
                uncertainty = UncertaintyRule.for_model(engine.info.calibration, uncertain_threshold, uncertain_margin)
                options = ClassifyOptions(hop_seconds=hop_seconds, top_k=min(top_k, len(engine.labels)), as_json=True,
                                          with_windows=with_windows, uncertainty=uncertainty, model_choice=engine.chosen)
                spec = WorkerSpec(model, device, hop_seconds, json_options=options)
                report = run_jsonl(list(paths), out_path, spec, settings, engine.model_id, retry_errors, progress)
            else:
                assert db_path is not None
                spec = WorkerSpec(model, device, hop_seconds, read_tags=True)
                config = ScanConfig(model_path, device, hop_seconds=hop_seconds, retry_errors=retry_errors)
                with LibraryDB(db_path) as db:
                    report = run_index(db, list(paths), config, spec, settings, engine.model_id, progress)
    except (ClusterError, LibraryError, ModelError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps(report.as_dict(), indent=2) if as_json else report.text())
    if report.interrupted:
        click.echo("interrupted; run the same command again to finish", err=True)
        sys.exit(130)
    if report.failed:
        sys.exit(1)
