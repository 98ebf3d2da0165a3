"""The driver's side of a cluster job: connect to Ray, keep every CPU busy, turn failures into outcomes.

Why Ray tasks and not an actor pool: a task whose node dies is re-run by Ray on any node with a
free CPU (``max_retries``), with nothing for the driver to do; a restarted actor needs a free CPU
of its own before its queued calls run, so on a full cluster its files would wait for a node that
is not coming back. One onnxruntime session per worker still holds: Ray reuses a worker process
for every task after its first, and ``worker.engine_for`` keeps the session in the process.

Only ``max_in_flight`` files are out at a time (twice the cluster's CPUs, re-read every few
seconds as nodes come and go): the queue never runs ahead of the cluster, and an interrupted job
has at most that many analyses to redo. Results come back in completion order and are handed to
the caller one by one, which writes each before the next is taken.

Ray is imported here only, inside functions: the runtime works without the ``[cluster]`` extra.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from .. import __version__
from ..library.scan import Job
from .worker import FileDone, WorkerSpec, analyse, failed

log = logging.getLogger(__name__)

RESIZE_EVERY_S = 5.0  # how often the in-flight limit follows the cluster's CPU count
WAIT_S = 1.0  # longest wait for a result before the progress line is redrawn


class ClusterError(Exception):
    """The job cannot go on (no Ray, no cluster, a node that cannot analyse); the message says why."""


@dataclass(frozen=True)
class ClusterSettings:
    """Where and how hard to run."""

    address: str = "auto"  # HOST:PORT of the head, "auto" (RAY_ADDRESS or this machine's `ray start`), or "local"
    retries: int = 3  # re-runs of a file's task after its worker process or node died
    max_in_flight: int = 0  # files submitted at once; 0: twice the cluster's CPUs


@dataclass
class NodeTally:
    files: int = 0
    seconds: float = 0.0  # analysis wall time on the node's workers
    cpu_seconds: float = 0.0


@dataclass
class NodeSummary:
    """Per node, for the summary: who did how much (a node that died keeps its count)."""

    address: str
    files: int
    seconds: float
    cpu_seconds: float
    alive: bool = True


def import_ray() -> ModuleType:
    """Ray, or a ClusterError that says how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ClusterError("Ray is not installed: pip install 'genre-stream[cluster]' (on every node)") from exc
    return ray


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail at once when nothing listens at HOST:PORT: ``ray.init`` would retry for minutes before saying so."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return  # "auto", "local" or a scheme: Ray's own lookup
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ClusterError(f"no Ray head answers at {address} ({exc.strerror or exc}); is `ray start --head` running there?") from exc


def _restore(handlers: dict[signal.Signals, Any]) -> None:
    """Put back the Python signal handlers ``ray.init`` replaced: its SIGTERM handler ends the process at
    once, where the command's turns SIGTERM into an orderly stop (results written, the rest left for the next run, exit 130)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig, handler in handlers.items():
        if handler is not None:
            signal.signal(sig, handler)


class RayRunner:
    """A connection to a cluster (a context manager) that analyses jobs there (``run``).

    It connects on the first ``run``, so a re-run with nothing left to do never touches the cluster."""

    def __init__(self, settings: ClusterSettings, spec: WorkerSpec, expected_model: str) -> None:
        self.settings = settings
        self.spec = spec
        self.expected_model = expected_model  # every result must come from the driver's model
        self.nodes: dict[str, NodeTally] = {}
        self.cpus = 0  # the most the cluster had during the job
        self._ray: Any = None
        self._owned = False
        self._task: Any = None
        self._limit = 0
        self._resized = 0.0
        self._ticks: list[Callable[[], None]] = []
        self._stdout: Any = None

    def __enter__(self) -> RayRunner:
        return self

    def connect(self) -> None:
        if self._ray is not None:
            return
        ray = import_ray()
        if not ray.is_initialized():
            _check_reachable(self.settings.address)
            kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
            if self.settings.address == "local":
                kwargs["include_dashboard"] = False
            handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                ray.init(address=self.settings.address, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ClusterError(f"cannot reach a Ray cluster at {self.settings.address!r}: {exc}") from exc
            finally:
                _restore(handlers)
            self._owned = True
        self._ray = ray
        # Ray's driver prints the cluster's own messages ("node ... marked dead", "task ... retried") to
        # sys.stdout from a thread of its own; they are news for the person on stderr, and stdout stays
        # the command's (its summary, --json), so stdout is stderr while connected.
        self._stdout, sys.stdout = sys.stdout, sys.stderr
        # num_cpus=1: one file per CPU, as the engine uses one thread; retries cover dead workers/nodes.
        self._task = ray.remote(num_cpus=1, max_retries=self.settings.retries, retry_exceptions=False)(analyse)
        self._resize(force=True)
        log.info("connected to Ray at %s: %d CPUs on %d nodes", self.settings.address, self.cpus, len(self.alive_nodes()))

    def __exit__(self, *exc: object) -> None:
        if self._owned and self._ray is not None:
            self._ray.shutdown()
        if self._stdout is not None:
            sys.stdout, self._stdout = self._stdout, None

    def on_tick(self, callback: Callable[[], None]) -> None:
        """Called after every wait (at least once a second): a progress line keeps moving between files."""
        self._ticks.append(callback)

    def alive_nodes(self) -> dict[str, str]:
        """Ray node id -> address of every live node."""
        return {n["NodeID"]: n.get("NodeManagerAddress", "?") for n in self._ray.nodes() if n.get("Alive")}

    def node_addresses(self) -> dict[str, str]:
        """Ray node id -> address of every node the cluster has known (dead ones too)."""
        return {n["NodeID"]: n.get("NodeManagerAddress", "?") for n in self._ray.nodes()}

    def summaries(self) -> list[NodeSummary]:
        """Files and analysis time per node that did any (empty when the job never connected)."""
        if self._ray is None:
            return []
        alive, names = self.alive_nodes(), self.node_addresses()
        return [NodeSummary(names.get(node, node[:12]), t.files, round(t.seconds, 3), round(t.cpu_seconds, 3), node in alive)
                for node, t in sorted(self.nodes.items(), key=lambda kv: -kv[1].files) if node]

    def _resize(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._resized < RESIZE_EVERY_S:
            return
        self._resized = now
        cpus = int(self._ray.cluster_resources().get("CPU", 0))
        self.cpus = max(self.cpus, cpus)
        self._limit = self.settings.max_in_flight or max(2, 2 * cpus)

    def run(self, jobs: Iterable[Job]) -> Generator[FileDone, None, None]:
        """Analyse ``jobs`` on the cluster; yields each file's outcome as it finishes, exactly once.

        Closing the generator early (the caller was interrupted) abandons what is still out: those
        files were not yielded, so nothing of theirs was written and the next run does them. Their
        tasks end with the driver's connection (Ray cancels the tasks of a driver that is gone); an
        explicit ``ray.cancel`` of tasks finishing at that moment crashes Ray 2.60's driver
        ("Tried to complete task that was not pending"), so there is none."""
        self.connect()
        ray = self._ray
        pending = iter(jobs)
        inflight: dict[Any, Job] = {}
        exhausted = False
        try:
            while True:
                self._resize()
                while not exhausted and len(inflight) < self._limit:
                    job = next(pending, None)
                    if job is None:
                        exhausted = True
                        break
                    inflight[self._task.remote(job, self.spec)] = job
                if not inflight:
                    return
                ready, _ = ray.wait(list(inflight), num_returns=1, timeout=WAIT_S)
                if ready:  # take everything finished meanwhile, not one per round trip
                    ready, _ = ray.wait(list(inflight), num_returns=len(inflight), timeout=0)
                for ref in ready:
                    yield self._collect(ref, inflight.pop(ref))
                for tick in self._ticks:
                    tick()
        finally:
            if inflight:
                log.warning("%d file(s) in progress were abandoned; the next run does them", len(inflight))

    def _collect(self, ref: Any, job: Job) -> FileDone:
        errors = self._ray.exceptions
        try:
            done: FileDone = self._ray.get(ref)
        except errors.RayTaskError as exc:  # analyse() catches every per-file failure: the worker itself is broken
            cause = getattr(exc, "cause", None) or exc
            raise ClusterError(f"a worker cannot analyse ({type(cause).__name__}: {cause}); "
                               "every node needs the same genre-stream and model (docs/CLUSTER.md)") from exc
        except errors.WorkerCrashedError:
            tries = self.settings.retries + 1
            log.error("%s: the worker process died on this file %d times", job.path, tries)
            return failed(job, f"the worker process died on this file {tries} times (decoder or model crash)", transient=False)
        except errors.RayError as exc:  # node died, out of memory, object lost: the cluster's fault, not the file's
            log.warning("%s: %s; a later run retries it", job.path, type(exc).__name__)
            return failed(job, f"the cluster lost this file's task ({type(exc).__name__}); a later run retries it", transient=True)
        result = done.outcome.result
        if result is not None and result.model != self.expected_model:
            raise ClusterError(f"node {self.node_addresses().get(done.node, done.node)} analyses with model {result.model}, "
                               f"this driver with {self.expected_model}: install the same genre-stream and model everywhere")
        if done.version != __version__:
            raise ClusterError(f"node {self.node_addresses().get(done.node, done.node)} runs genre-stream {done.version}, "
                               f"this driver {__version__}: install the same genre-stream everywhere")
        tally = self.nodes.setdefault(done.node, NodeTally())
        tally.files += 1
        tally.seconds += done.seconds
        tally.cpu_seconds += done.cpu_seconds
        return done
