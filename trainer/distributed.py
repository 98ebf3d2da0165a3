"""Training under ``torchrun``: the rank's view (``Dist``), its device, and the process group's lifetime.

Without ``torchrun`` (``WORLD_SIZE`` unset) everything here is a one-process no-op, so the recipe
(``train.py``) has one code path.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import torch

log = logging.getLogger(__name__)

T = TypeVar("T")


class TrainError(RuntimeError):
    """A run that cannot start or continue; the message says what to change."""


@dataclass
class Dist:
    """Where this process sits in a torchrun job (world 1 when run plainly)."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def broadcast(self, obj: T) -> T:
        """Rank 0's value of ``obj`` on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def sum(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def _pick_device(name: str, local_rank: int) -> torch.device:
    if name not in ("auto", "cpu", "cuda"):
        raise TrainError(f"unknown device {name!r}; choose auto, cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainError("device 'cuda' asked for, but PyTorch sees no CUDA GPU")
    if name != "cpu" and torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


@contextlib.contextmanager
def distributed(device: str) -> Iterator[Dist]:
    """Join the torchrun process group when launched by torchrun; a plain one-process context otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _pick_device(device, local_rank)
    if world <= 1:
        yield Dist(0, 1, dev)
        return
    backend = "nccl" if dev.type == "cuda" else "gloo"
    torch.distributed.init_process_group(backend=backend)
    try:
        d = Dist(torch.distributed.get_rank(), torch.distributed.get_world_size(), dev)
        log.info("rank %d of %d on %s (%s)", d.rank, d.world, dev, backend)
        yield d
        # Leave together: rank 0 still writes RUN after the last collective, and a peer that tore
        # gloo down meanwhile once made rank 0 abort at exit ("terminate called without an active exception").
        d.barrier()
    finally:
        torch.distributed.destroy_process_group()
