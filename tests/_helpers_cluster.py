"""A real multi-node Ray cluster on this machine, for tests/test_cluster.py and benchmarks/cluster.py.

Each node is `ray start ... --block`, the command a user runs, in a session of its own: one process
group per node (its raylet, workers and agents), so killing a node is one SIGKILL to its group (what
a machine that dies looks like to the others), and cleaning up ends only what this helper started.
Never `ray stop`: it ends every Ray of this user on the machine, a developer's own cluster included.

The head's node address is this machine's, further nodes get 127.0.0.2, .3, ... (all loopback on
Linux), so each node has an address of its own in Ray's node table and the job's summary. The cluster
gets a token of its own (``RAY_AUTH_MODE=token``, ``RAY_AUTH_TOKEN``) that the nodes and the driver
share, as a real cluster does, and nothing is read from or written to ``~/.ray``. Node death is
noticed within ~2 s instead of Ray's default ~30 s (``RAY_health_check_*``).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

RAY = Path(sys.executable).with_name("ray")  # the venv's ray CLI (the [cluster] extra)
READY = "Ray runtime started"
OBJECT_STORE_BYTES = 100_000_000  # Ray's minimum is 75 MB; results are small and never hold audio


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RayNode:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def running(self, task: str) -> bool:
        """Is one of the node's worker processes executing ``task`` now? (Ray titles it ``ray::<task>``.)"""
        for pid in descendants(self.proc.pid):
            try:
                if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(f"ray::{task}".encode()):
                    return True
            except OSError:
                continue
        return False

    def kill(self) -> None:
        """SIGKILL to every process of the node at once, as if its machine died: no draining, no goodbye.

        Its process group holds the raylet and agents; Ray's worker processes start sessions of their
        own, so they are found as the raylet's children."""
        doomed = set(descendants(self.proc.pid)) | set(group_members(self.proc.pid))
        for pid in doomed:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=30)
        _wait_gone(doomed | set(group_members(self.proc.pid)))


@dataclass
class RayCluster:
    """``start`` the head, ``add_node`` more; ``stop`` (or the context manager) kills them all."""

    cpus_per_node: int = 1
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="gsray")))  # short: socket paths < 108 chars
    nodes: list[RayNode] = field(default_factory=list)
    port: int = 0
    env: dict[str, str] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 120) -> RayCluster:
        self.port = free_port()
        self.env = {
            **os.environ,
            "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_health_check_period_ms": "500", "RAY_health_check_timeout_ms": "1000",
            "RAY_health_check_failure_threshold": "3",
        }
        self.env.pop("RAY_ADDRESS", None)
        self._spawn("head", ["--head", "--node-ip-address", "127.0.0.1", "--port", str(self.port),
                             "--include-dashboard", "false"], timeout)
        return self

    def add_node(self, timeout: float = 120) -> RayNode:
        ip = f"127.0.0.{len(self.nodes) + 1}"
        return self._spawn(f"node{len(self.nodes)}", ["--address", self.address, "--node-ip-address", ip], timeout)

    def _spawn(self, name: str, args: list[str], timeout: float) -> RayNode:
        log = self.root / f"{name}.log"
        temp = self.root / name
        cmd = [str(RAY), "start", *args, "--num-cpus", str(self.cpus_per_node), "--num-gpus", "0",
               "--object-store-memory", str(OBJECT_STORE_BYTES), "--temp-dir", str(temp), "--disable-usage-stats", "--block"]
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        node = RayNode(name, proc, log)
        self.nodes.append(node)
        end = time.monotonic() + timeout
        while READY not in log.read_text(errors="replace"):
            if not node.alive or time.monotonic() > end:
                raise RuntimeError(f"ray node {name} did not start:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)
        return node

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.kill()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> RayCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _proc_stats() -> dict[int, tuple[str, int, int]]:
    """pid -> (state, parent pid, process group) of every process, from /proc."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(stat.parent.name)] = (fields[0], int(fields[1]), int(fields[2]))
    return out


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group."""
    return [pid for pid, (state, _, group) in _proc_stats().items() if group == pgid and state != "Z"]


def descendants(pid: int) -> list[int]:
    """Live processes below ``pid`` (children, grandchildren, ...), whatever their session."""
    stats = _proc_stats()
    children: dict[int, list[int]] = {}
    for child, (state, parent, _) in stats.items():
        if state != "Z":
            children.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _wait_gone(pids: set[int], timeout: float = 10) -> None:
    """Wait until none of ``pids`` is alive (SIGKILL is delivered, not yet acted on, when kill returns)."""
    end = time.monotonic() + timeout
    while alive := [p for p, (state, _, _) in _proc_stats().items() if p in pids and state != "Z"]:
        if time.monotonic() > end:
            raise RuntimeError(f"processes still alive after SIGKILL: {alive}")
        time.sleep(0.1)
