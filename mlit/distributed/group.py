"""The processes of one run under torchrun: the world (rank, size; the one place a rank
decides whether it writes files), joining and leaving the process group, and the few
collectives the runner uses to agree (sums, maxima, rank 0's value of an object)."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def writer(self) -> bool:
        """Rank 0 alone holds the run folder's lock and writes checkpoints and logs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def __str__(self) -> str:
        return f"rank {self.rank} of {self.size}"


_world = World()


def world() -> World:
    return _world


def init() -> World:
    """Join torchrun's process group once per process; World() when not under torchrun.
    Before the recipe is read, so that every rank can report its errors through the group
    (`agreed`): gloo for CPU tensors and, where CUDA is, NCCL for CUDA tensors; each rank's
    GPU is its LOCAL_RANK."""
    global _world
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1 or _world.distributed:
        return _world
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local)
    # a lost peer surfaces within minutes, not the default half hour
    dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo", rank=rank,
                            world_size=size, timeout=datetime.timedelta(minutes=5))
    _world = World(rank, size, local)
    return _world


def torchrun_rank() -> int | None:
    """This process's rank when torchrun (or `mlit.train --nproc-per-node`) started it."""
    return int(os.environ["RANK"]) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None


def shutdown() -> None:
    global _world
    if _world.distributed and dist.is_initialized():
        dist.destroy_process_group()
    _world = World()


def leave(status: int):
    """End a torchrun worker that has finished (its report written, its files closed)
    without the interpreter's teardown: torch's native threads can still be running there,
    and one that meets the teardown aborts the process with "terminate called without an
    active exception", a stray line above the job's one line (seen once in CI, after a
    Ctrl-C to the launcher). The exit handlers run first, as at a normal exit."""
    import atexit
    import sys

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(status)


def device_of(device: torch.device) -> torch.device:
    """Each rank's own GPU (LOCAL_RANK) when the run is on CUDA."""
    if _world.distributed and device.type == "cuda":
        return torch.device("cuda", _world.local_rank)
    return device


def barrier() -> None:
    if _world.distributed:
        dist.barrier()


def sum_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """The sum of a tensor over every rank (no gradient): evaluation's counts and losses."""
    if _world.distributed:
        values = values.clone()
        dist.all_reduce(values)
    return values


def max_over_ranks(values: list[int]) -> list[int]:
    """The element-wise maximum of a few integers over every rank, through gloo on the CPU
    (no GPU synchronisation): how the ranks agree to stop or to checkpoint at a step."""
    if not _world.distributed:
        return list(values)
    flags = torch.tensor(values, dtype=torch.int64)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return flags.tolist()


def broadcast_object(obj):
    """Rank 0's value of a picklable object on every rank."""
    if not _world.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
