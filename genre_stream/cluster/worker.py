"""What a Ray worker process runs for one file: the local scan's per-file work, with a cached model.

No ray import here: Ray ships ``analyse`` to the workers by reference (every node has the same
genre-stream installed and imports this module), and the benchmark calls it in-process for the
local baseline, so the cluster and the local run execute the same lines.

Only a path goes to the worker and only the result comes back (a JSON record of a few hundred
bytes, or the index's means): the worker decodes the file itself, block by block, so neither the
object store nor the driver ever holds audio, however long the file.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .. import __version__
from ..audio.decode import read_tags
from ..library.scan import Job, Outcome, process_job
from ..model.bundled import BUNDLED_MODELS, bundled_model_path
from ..model.choice import open_engine, resolve
from ..model.engine import Engine
from ..tracks import TRACK_HOP_SECONDS
from ..tracks.classify import ClassifyOptions, result_to_dict

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerSpec:
    """How every worker analyses; one per job, sent with each task (a few hundred bytes)."""

    model: str  # a bundled name ("int8", "fp32") or an absolute path every node can read; never "auto"
    device: str = "auto"
    hop_seconds: float = TRACK_HOP_SECONDS
    json_options: ClassifyOptions | None = None  # a JSON-lines job: the record is made where the windows are
    read_tags: bool = False  # an index job stores artist/title: read them on the worker, not on the driver


@dataclass
class FileDone:
    """One file's outcome as it reaches the driver: no audio, no windows."""

    outcome: Outcome
    record: dict[str, Any] | None = None  # the JSON line (JSON-lines jobs; the driver adds the file stamp)
    node: str = ""  # the Ray node that analysed it ("" outside Ray, or when Ray gave up on the file)
    seconds: float = 0.0  # the analysis's wall time on the worker
    cpu_seconds: float = 0.0  # and its CPU time (the cost per audio hour, whatever else the node runs)
    version: str = __version__  # genre-stream on the worker: a node with another version is refused


def worker_model(spec: str | Path | None, device: str = "auto") -> str:
    """``--model`` as every node must read it: ``auto`` decided once, here (a node must not pick another
    export than its neighbours), a bundled export by its short name (the package lives at another path on
    each node), any other file as an absolute path (which must exist on every node)."""
    path = resolve(spec, device).path
    for name in BUNDLED_MODELS:
        if path == bundled_model_path(name):
            return name
    return str(path.resolve())


# One onnxruntime session per worker process: Ray reuses the process for every task after its first.
_ENGINES: dict[tuple[str, str], Engine] = {}


def engine_for(spec: WorkerSpec) -> Engine:
    """The process's session for ``spec``'s model (one thread: Ray gives each task one CPU)."""
    key = (spec.model, spec.device)
    if key not in _ENGINES:
        _ENGINES[key] = open_engine(spec.model, device=spec.device, threads=1)
        log.info("worker process loaded %s (%s)", _ENGINES[key].model_id, _ENGINES[key].precision)
    return _ENGINES[key]


def analyse(job: Job, spec: WorkerSpec) -> FileDone:
    """One file, start to finish; a bad file is an outcome with ``error``, never an exception.

    An exception out of here means the worker itself is unusable (model file missing on its node,
    genre-stream not installed): the driver stops the job rather than mark every file failed."""
    engine = engine_for(spec)
    start, cpu_start = time.perf_counter(), time.process_time()
    outcome = process_job(job, engine, spec.hop_seconds, keep_windows=spec.json_options is not None)
    record = None
    if outcome.result is not None:
        if spec.json_options is not None:
            record = result_to_dict(Path(job.path), outcome.result, spec.json_options)
        # The driver needs only the means (index) or the record: the windows and the gate stay here.
        outcome.result = replace(outcome.result, windows=[], gate=None)
        if spec.read_tags:
            outcome.tags = read_tags(job.path)
    return FileDone(outcome, record, _node_id(), time.perf_counter() - start, time.process_time() - cpu_start)


def _node_id() -> str:
    """The Ray node this runs on ("" when called outside Ray); ray is already loaded in a Ray worker."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return ""
    return str(ray.get_runtime_context().get_node_id())


def failed(job: Job, reason: str, transient: bool) -> FileDone:
    """A file Ray could not get analysed (its worker or node died past the retries)."""
    return FileDone(Outcome(job.path, error=reason, transient=transient))
