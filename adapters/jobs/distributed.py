"""The torch.distributed process group of a job (``torchrun``; one process without it) and
its rank-aware progress bars.  Batch ``b`` belongs to rank ``b mod world_size``; the ranks
meet only at the start (rank 0 prepares the output directory) and at the end (a barrier,
then rank 0 merges the manifest)."""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .config import JobConfig
from .env import resolve_device

__all__ = ["ProcessGroup", "process_group", "progress_bar"]


class ProcessGroup:
    """The torch.distributed process group (or a single process without one)."""

    def __init__(self, device: torch.device, timeout: float) -> None:
        self.owned = False
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if dist.is_available() and dist.is_initialized():
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
        elif world > 1:
            backend = "nccl" if device.type == "cuda" else "gloo"
            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))
            self.owned = True
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
        else:
            self.rank, self.world = 0, 1

    @property
    def distributed(self) -> bool:
        """Whether there is more than one rank."""
        return self.world > 1

    def barrier(self) -> None:
        """Wait for every rank (a no-op in one process)."""
        if self.distributed:
            dist.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (rank order), on every rank."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        """Destroy the process group if this object created it."""
        if self.owned:
            dist.destroy_process_group()


@contextlib.contextmanager
def process_group(cfg: JobConfig) -> Iterator[ProcessGroup]:
    """The job's process group for the duration of a ``with`` block (closed after).

    On a normal exit every rank meets at a barrier before the group is destroyed: a rank that
    tore down its gloo context and exited while another was still finishing could abort the
    other (seen once in the two-rank test: rank 1 "terminate called without an active
    exception").  After an exception no rank waits: the others may never arrive."""
    g = ProcessGroup(resolve_device(cfg.device), cfg.timeout)
    try:
        yield g
        g.barrier()
    finally:
        g.close()



def progress_bar(g: ProcessGroup, cfg: JobConfig, total: int, desc: str) -> Any:
    """A progress bar per rank (on a TTY only, unless ``cfg.progress`` says otherwise)."""
    disable = (not cfg.progress) if cfg.progress is not None else None
    return tqdm(total=total, desc=f"{desc} [rank {g.rank}/{g.world}]", position=g.rank,
                disable=disable, unit="sample", leave=g.rank == 0)

