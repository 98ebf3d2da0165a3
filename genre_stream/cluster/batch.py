"""A cluster job from start to end: plan against what is done, run on Ray, write each result as it arrives.

Two outputs, each its own record of what is done, so a re-run (after an interrupt, a crash or a
change to the archive) analyses only what is missing:

* ``run_jsonl``: a JSON-lines file (``ledger.py``): the ``classify --json`` object per file, keyed by
  path + size + mtime;
* ``run_index``: the library index, through ``library.scan.scan`` itself with the cluster as its
  executor, so the rows, the content-hash reuse of moved files and the error records are exactly
  those of a local ``library scan``.

Either way only the driver writes, one result at a time as it arrives (``runner.RayRunner.run``),
and a file whose task was cancelled or lost is simply not written, so it is done by the next run.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Generator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ..audio.decode import find_audio_files
from ..common.jsonsafe import display_path
from ..common.progress import duration_text
from ..library.db import LibraryDB
from ..library.scan import Job, Outcome, ScanConfig, scan
from .ledger import ResultsFile, read_ledger
from .progress import AUDIO_S_PER_HOUR, JobProgress
from .runner import ClusterSettings, NodeSummary, RayRunner
from .worker import FileDone, WorkerSpec

log = logging.getLogger(__name__)


@dataclass
class BatchReport:
    """What a job did, for the summary line and ``--json``."""

    output: str
    found: int = 0
    already_done: int = 0  # finished by an earlier run (unchanged since)
    skipped_errors: int = 0  # bad files of an earlier run, unchanged: not retried without --retry-errors
    tagged: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    retry_later: int = 0  # of ``failed``: the cluster's fault (a node died past the retries); the next run redoes them
    removed: int = 0  # index jobs: tracks of files gone from the scanned folders
    interrupted: bool = False
    audio_s: float = 0.0
    wall_s: float = 0.0
    cpus: int = 0
    nodes: list[NodeSummary] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["failed"] = len(self.failed)
        data["errors"] = [{"path": p, "reason": r} for p, r in self.failed]
        data["audio_hours"] = round(self.audio_s / AUDIO_S_PER_HOUR, 4)
        data["audio_hours_per_hour"] = round(self.audio_s / max(self.wall_s, 1e-9), 1)
        # What one core spends per audio hour, from the workers' own CPU clocks (not the shared wall clock).
        cpu = sum(n.cpu_seconds for n in self.nodes)
        data["cpu_s_per_audio_hour"] = round(cpu / (self.audio_s / AUDIO_S_PER_HOUR), 1) if self.audio_s else None
        return data

    def text(self) -> str:
        hours = self.audio_s / AUDIO_S_PER_HOUR
        rate = self.audio_s / max(self.wall_s, 1e-9)
        failed = f"{len(self.failed)} failed" + (f" ({self.retry_later} retried on the next run)" if self.retry_later else "")
        lines = [f"{self.found} audio files: {self.tagged} tagged, {self.already_done} already done, {failed}, "
                 f"{self.skipped_errors} known bad skipped" + (f", {self.removed} removed" if self.removed else "") + "; "
                 f"{hours:.2f} audio hours in {duration_text(self.wall_s)} ({rate:.0f} audio h per hour, "
                 f"{self.tagged / max(self.wall_s, 1e-9):.2f} files/s) on {self.cpus} CPUs; results: {self.output}"]
        lines += [f"  node {n.address}: {n.files} files, {n.cpu_seconds:.0f} CPU-s of analysis" + ("" if n.alive else " (node gone)")
                  for n in self.nodes]
        return "\n".join(lines)


def list_files(paths: list[str | Path]) -> tuple[list[tuple[str, int, int]], list[str]]:
    """(absolute path, size, mtime_ns) of every audio file under ``paths``, and what could not be listed."""
    found, errors = find_audio_files(list(paths))
    problems = [str(e) for e in errors]
    files: dict[str, tuple[str, int, int]] = {}
    for f in found:
        path = os.path.abspath(f)
        try:
            st = os.stat(path)
        except OSError as exc:
            problems.append(f"{display_path(path)}: cannot read ({exc.strerror or exc})")
            continue
        files[path] = (path, st.st_size, st.st_mtime_ns)
    return sorted(files.values()), problems


def _jsonl_line(done: FileDone) -> dict[str, Any]:
    """The results line of one file: its record and stamp, or its error."""
    o = done.outcome
    stamp = {"size": o.stamp.size, "mtime_ns": o.stamp.mtime_ns} if o.stamp else {}
    if o.error is None and done.record is not None:
        return done.record | stamp | {"hash": o.content_hash}
    return {"path": display_path(o.path), "error": o.error or "no result", "retry": o.transient} | stamp


def run_jsonl(paths: list[str | Path], out: Path, spec: WorkerSpec, settings: ClusterSettings, expected_model: str,
              retry_errors: bool = False, progress: JobProgress | None = None, err: TextIO | None = None) -> BatchReport:
    """Tag every audio file under ``paths`` not yet in ``out``, appending one line per file as it finishes."""
    progress = progress or JobProgress(status_every=0)
    err = err or sys.stderr
    report = BatchReport(str(out))
    files, problems = list_files(paths)
    report.found = len(files)
    for problem in problems:
        print(f"error: {problem}", file=err)
        report.failed.append((problem, "cannot be listed"))
    with ResultsFile(out) as results:
        ledger = read_ledger(out)  # after opening: a torn last line is already cut
        jobs: list[Job] = []
        for path, size, mtime_ns in files:
            entry = ledger.get(display_path(path))
            if entry is None or not entry.covers(size, mtime_ns, expected_model, retry_errors):
                jobs.append(Job(path, size=size))
            elif entry.ok:
                report.already_done += 1
            else:
                report.skipped_errors += 1
        log.info("%d files, %d already done, %d known bad skipped: %d to tag", len(files), report.already_done,
                 report.skipped_errors, len(jobs))
        if not jobs:
            return report
        with RayRunner(settings, spec, expected_model) as runner:
            runner.on_tick(progress.tick)
            progress.begin(jobs)
            shown_err = progress.above(err)
            outcomes = runner.run(jobs)
            try:
                for done in outcomes:
                    results.write(_jsonl_line(done))  # written before the next is taken: nothing finished is lost
                    _count(report, done.outcome, shown_err)
                    progress.record(done.outcome)
            except KeyboardInterrupt:
                report.interrupted = True
            finally:
                outcomes.close()  # abandons what is still out: not written, so the next run does it
                progress.close()
                report.nodes, report.cpus = runner.summaries(), runner.cpus
    report.audio_s, report.wall_s = progress.stats.audio_s, progress.stats.elapsed
    return report


def _count(report: BatchReport, outcome: Outcome, err: TextIO) -> None:
    if outcome.error is None:
        report.tagged += 1
        return
    report.failed.append((outcome.path, outcome.error))
    report.retry_later += outcome.transient
    print(f"error: {display_path(outcome.path)}: {outcome.error}", file=err)


def run_index(db: LibraryDB, paths: list[str | Path], config: ScanConfig, spec: WorkerSpec, settings: ClusterSettings,
              expected_model: str, progress: JobProgress | None = None) -> BatchReport:
    """``library scan`` with the cluster as its executor: the same plan, rows and error records as a local scan."""
    progress = progress or JobProgress(status_every=0)
    report = BatchReport(str(db.path))
    with RayRunner(settings, spec, expected_model) as runner:
        runner.on_tick(progress.tick)

        def on_cluster(jobs: list[Job]) -> Generator[Outcome, None, None]:
            if not jobs:  # nothing new: the cluster is not even contacted
                return
            progress.begin(jobs)
            outcomes = runner.run(jobs)
            try:
                for done in outcomes:
                    progress.record(done.outcome)
                    report.retry_later += done.outcome.transient
                    yield done.outcome
            finally:
                outcomes.close()
                progress.close()

        scanned = scan(db, paths, config, runner=on_cluster)
        report.nodes, report.cpus = runner.summaries(), runner.cpus
    report.found, report.already_done, report.skipped_errors = scanned.found, scanned.unchanged, scanned.skipped_errors
    report.tagged = len(scanned.analysed) + len(scanned.reused)
    report.failed, report.removed, report.interrupted = scanned.failed, len(scanned.removed), scanned.interrupted
    report.audio_s, report.wall_s = progress.stats.audio_s, progress.stats.elapsed
    return report
