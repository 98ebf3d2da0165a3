"""Incremental scanning of music folders into the library database.

A file is analysed only when it is new, its size or mtime changed, or it was
analysed by another model; a changed mtime with unchanged bytes (``touch``, a copy
that kept the content, a move) reuses the stored analysis by content hash. Files
gone from a scanned folder are dropped; tracks outside the scanned folders are
left alone, so scanning one folder never forgets another.

Analysis runs in ``workers`` spawned processes (each loads the model once and uses
one thread, so two workers fill two cores). Only ``workers`` files are in flight at
a time: every outcome is committed as soon as it arrives, an interrupt loses at
most the files being analysed, and when a worker process dies (a decoder crash,
the OOM killer) the files it may have held are retried one by one in a fresh
process, so only the file that kills it again is recorded as an error.

``scan(..., runner=...)`` hands the same jobs to another executor (``genre-stream batch --db``
runs them on a Ray cluster, ``genre_stream.cluster``): planning, committing and removal stay here,
so a cluster-built index is the one a local scan would have written.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..audio.decode import AudioError, Tags, find_audio_files, read_tags
from ..model.choice import open_engine
from ..model.engine import Engine
from ..tracks import TRACK_HOP_SECONDS
from ..tracks.analysis import TrackResult, analyse_file
from .db import FileStamp, LibraryDB, LibraryError, file_hash

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScanConfig:
    """How to analyse: which model, where, and how many processes."""

    model_path: str | Path | None = None
    device: str = "auto"
    workers: int = 2
    hop_seconds: float = TRACK_HOP_SECONDS
    retry_errors: bool = False  # re-try unchanged files that failed before


@dataclass(frozen=True)
class Job:
    """One file to look at, with stored analyses it may be a byte-identical copy of."""

    path: str
    candidates: dict[str, str] = field(default_factory=dict)  # content hash -> stored path
    size: int = 0  # bytes when planned: a cluster run's progress estimates its remaining time from them


@dataclass
class Outcome:
    """What became of one job; exactly one of result / reused_from / error is set."""

    path: str
    stamp: FileStamp | None = None
    content_hash: str | None = None
    result: TrackResult | None = None
    reused_from: str | None = None
    error: str | None = None
    # The executor, not the file, failed (a cluster node died, retries ran out): reported but not
    # recorded, so the next scan tries the file again. Local scans never set it.
    transient: bool = False
    tags: Tags | None = None  # read where the file was analysed (a cluster worker); None: read when stored


@dataclass
class ScanReport:
    found: int = 0
    unchanged: int = 0
    skipped_errors: int = 0
    analysed: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    interrupted: bool = False


# -- the per-file work (runs in worker processes) -------------------------------------

_engine: Engine | None = None
_hop_seconds: float = TRACK_HOP_SECONDS


def _init_worker(model_path: str | Path | None, device: str, threads: int, hop_seconds: float) -> None:
    """Load the model once per process; the parent handles Ctrl-C, so workers ignore it."""
    global _engine, _hop_seconds
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _engine = open_engine(model_path, device=device, threads=threads)
    _hop_seconds = hop_seconds


def _process(job: Job) -> Outcome:
    """A pool process's job, with the model ``_init_worker`` loaded."""
    assert _engine is not None, "worker used before _init_worker"
    return process_job(job, _engine, _hop_seconds)


def process_job(job: Job, engine: Engine, hop_seconds: float = TRACK_HOP_SECONDS, keep_windows: bool = False) -> Outcome:
    """Stamp, hash and analyse one file (or reuse a stored analysis of the same bytes); never raises for a bad file.

    Windows are dropped unless ``keep_windows`` (the index stores only the means; a caller that reports
    P(not music) or the timeline needs them)."""
    try:
        stamp = FileStamp.of(job.path)
        content_hash = file_hash(job.path)
    except OSError as exc:
        return Outcome(job.path, error=f"cannot read ({exc.strerror or exc})")
    if content_hash in job.candidates:
        return Outcome(job.path, stamp, content_hash, reused_from=job.candidates[content_hash])
    try:
        result = analyse_file(job.path, engine, hop_seconds)
    except AudioError as exc:
        return Outcome(job.path, stamp, content_hash, error=exc.reason)
    except Exception as exc:  # a model/runtime failure on one file must not end the scan
        log.exception("analysis of %s failed", job.path)
        return Outcome(job.path, stamp, content_hash, error=f"analysis failed ({type(exc).__name__}: {exc})")
    return Outcome(job.path, stamp, content_hash, result=result if keep_windows else replace(result, windows=[]))


# -- planning ---------------------------------------------------------------------------


def _under(path: str, roots: list[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


def collect_files(paths: list[str | Path]) -> tuple[list[str], list[str]]:
    """(audio files, scanned roots) as absolute paths; a missing path is an error, not 'all deleted'."""
    missing = [str(p) for p in paths if not Path(p).exists()]
    if missing:
        raise LibraryError(f"{', '.join(missing)}: no such file or directory (nothing was scanned or removed)")
    files, _empty_dirs = find_audio_files(list(paths))  # an emptied folder is not an error: its tracks go
    return sorted({os.path.abspath(f) for f in files}), [os.path.abspath(p) for p in paths]


def plan(db: LibraryDB, files: list[str], roots: list[str], model_id: str, retry_errors: bool) -> tuple[list[Job], list[str], ScanReport]:
    """Split found files into jobs and unchanged ones; list stored paths that are gone."""
    report = ScanReport(found=len(files))
    stored = db.stamps()
    errors = db.error_stamps()
    present = set(files)
    gone = sorted(p for p in set(stored) | set(errors) if _under(p, roots) and p not in present)
    # any stored analysis of the same bytes (a moved, touched or duplicated file) can be reused
    by_size: dict[int, dict[str, str]] = {}
    for p, (stamp, content_hash, model) in stored.items():
        if model == model_id:
            by_size.setdefault(stamp.size, {}).setdefault(content_hash, p)
    jobs: list[Job] = []
    for f in files:
        try:
            stamp = FileStamp.of(f)
        except OSError:
            jobs.append(Job(f))  # the worker records why it cannot be read
            continue
        old = stored.get(f)
        if old and old[0] == stamp and old[2] == model_id:
            report.unchanged += 1
            continue
        if f in errors and errors[f] == stamp and not retry_errors:
            report.skipped_errors += 1
            continue
        jobs.append(Job(f, by_size.get(stamp.size, {}), stamp.size))
    return jobs, gone, report


# -- running ----------------------------------------------------------------------------


class _Pool:
    """A spawned process pool with at most ``workers`` jobs in flight."""

    def __init__(self, config: ScanConfig, workers: int) -> None:
        self.config = config
        self.workers = workers
        self.executor = self._new()

    def _new(self) -> ProcessPoolExecutor:
        threads = 1 if self.workers > 1 else 0
        return ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),  # no fork after onnxruntime threads exist
            initializer=_init_worker,
            initargs=(self.config.model_path, self.config.device, threads, self.config.hop_seconds),
        )

    def run(self, jobs: list[Job]) -> Generator[Outcome, None, None]:
        pending = list(reversed(jobs))
        inflight: dict[Future[Outcome], Job] = {}
        try:
            while pending or inflight:
                try:
                    while pending and len(inflight) < self.workers:
                        inflight[self.executor.submit(_process, pending[-1])] = pending[-1]
                        pending.pop()
                except BrokenProcessPool:
                    if not inflight:  # a worker died between files: nothing to retry
                        self._restart()
                        continue
                done, _ = wait(inflight, return_when=FIRST_COMPLETED)
                broken: list[Job] = []
                for fut in done:
                    job = inflight.pop(fut)
                    try:
                        outcome = fut.result()
                    except BrokenProcessPool:
                        broken.append(job)
                        continue
                    yield outcome
                if broken:
                    broken += list(inflight.values())
                    inflight.clear()
                    log.warning("an analysis process died; re-trying %d file(s) one at a time", len(broken))
                    yield from self._isolated(broken)
                    self._restart()
        finally:
            self.executor.shutdown(wait=True, cancel_futures=True)

    def _restart(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.executor = self._new()

    def _isolated(self, jobs: list[Job]) -> Iterator[Outcome]:
        """Run ``jobs`` one at a time, so a process that dies again names its file."""
        solo = _Pool(self.config, 1).executor
        try:
            for job in jobs:
                try:
                    yield solo.submit(_process, job).result()
                except BrokenProcessPool:
                    log.error("%s: the analysis process died on this file", job.path)
                    yield Outcome(job.path, error="the analysis process died on this file (decoder or model crash)")
                    solo.shutdown(wait=True)
                    solo = _Pool(self.config, 1).executor
        finally:
            solo.shutdown(wait=True, cancel_futures=True)


def _run_inline(engine: Engine, config: ScanConfig, jobs: list[Job]) -> Generator[Outcome, None, None]:
    for job in jobs:
        yield process_job(job, engine, config.hop_seconds)


def _commit(db: LibraryDB, outcome: Outcome, report: ScanReport) -> None:
    if outcome.result is not None:
        db.upsert_track(outcome.path, outcome.result, outcome.stamp, outcome.content_hash, outcome.tags)
        report.analysed.append(outcome.path)
    elif outcome.reused_from is not None:
        assert outcome.stamp is not None and outcome.content_hash is not None
        db.copy_track(outcome.reused_from, outcome.path, outcome.stamp, outcome.content_hash)
        report.reused.append(outcome.path)
    else:
        reason = outcome.error or "unknown error"
        if not outcome.transient:  # a transient failure leaves no error row: the next scan retries the file
            db.record_error(outcome.path, reason, outcome.stamp)
        report.failed.append((outcome.path, reason))
        log.warning("%s: %s", outcome.path, reason)


def scan(
    db: LibraryDB,
    paths: list[str | Path],
    config: ScanConfig | None = None,
    on_plan: Callable[[int], None] | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
    runner: Callable[[list[Job]], Generator[Outcome, None, None]] | None = None,
) -> ScanReport:
    """Bring the index up to date with ``paths``; ``on_plan(n_jobs)``/``on_outcome`` drive progress.

    ``runner`` analyses the jobs elsewhere (a Ray cluster) instead of ``config.workers`` local processes.

    ``KeyboardInterrupt`` stops the scan after committing what finished and returns
    the report with ``interrupted`` set.
    """
    config = config or ScanConfig()
    files, roots = collect_files(paths)
    engine = open_engine(config.model_path, device=config.device)
    db.ensure_labels(engine.labels)  # before any work: a mismatch would fail every file
    jobs, gone, report = plan(db, files, roots, engine.model_id, config.retry_errors)
    if on_plan:
        on_plan(len(jobs))
    workers = max(1, min(config.workers, len(jobs)))
    if runner is not None:
        outcomes = runner(jobs)
    else:
        outcomes = _run_inline(engine, config, jobs) if workers == 1 else _Pool(config, workers).run(jobs)
    try:
        for outcome in outcomes:
            _commit(db, outcome, report)
            if on_outcome:
                on_outcome(outcome)
    except KeyboardInterrupt:
        report.interrupted = True
        log.warning("scan interrupted; %d file(s) indexed this run are kept", len(report.analysed) + len(report.reused))
    finally:
        outcomes.close()  # stops the workers (a pool finishes the files it holds, then exits)
        # Gone files' rows go after the copies above; after an interrupt, rows that an
        # unfinished job may still reuse (a moved file) wait for the next scan.
        finished = set(report.analysed + report.reused) | {p for p, _ in report.failed}
        still_needed = {src for job in jobs if job.path not in finished for src in job.candidates.values()}
        report.removed = [p for p in gone if p not in still_needed]
        db.remove(report.removed)
    if not report.interrupted:
        _read_missing_tags(db, roots)
    return report


def _read_missing_tags(db: LibraryDB, roots: list[str]) -> None:
    """Tracks indexed before tags were stored (schema 1) get them now: a header read, no re-analysis."""
    for path in db.untagged():
        if _under(path, roots) and os.path.isfile(path):
            db.set_tags(path, read_tags(path))
