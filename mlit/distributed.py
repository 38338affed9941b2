"""One run on several GPUs or nodes (docs/distributed.md): torchrun's environment, the process
group, and the one place a rank decides whether it writes files.

    torchrun --standalone --nproc_per_node=8 -m mlit.train recipes/mmlit_s.yaml

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; `init` joins the process group (NCCL on CUDA,
gloo on the CPU). Without torchrun the world is one process and nothing here does anything.
The recipe's batch_size stays the global batch: every rank takes batch_size / world of each
global batch, drawn from one order per (seed, epoch) (mlit/data/loaders.py).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from mlit.errors import BadInput, Fault, ProjectError, first_line


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


def init(device: str = "auto") -> World:
    """Join torchrun's process group once per process; World() when not under torchrun."""
    global _world
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1 or _world.distributed:
        return _world
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local)
    # a lost peer surfaces within minutes, not the default half hour
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=size,
                            timeout=datetime.timedelta(minutes=5))
    _world = World(rank, size, local)
    return _world


def shutdown() -> None:
    global _world
    if _world.distributed and dist.is_initialized():
        dist.destroy_process_group()
    _world = World()


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


class PeerStopped(BadInput):
    """Rank 0 stopped on an error of its own; the other ranks stop with it, silently: rank 0
    prints the cause, so one cause is one line, and no rank advises a resume that cannot
    help."""

    def line(self) -> str:
        return ""


class LostPeers(Fault):
    """A collective failed because another process of the run went away (exit 1)."""


@contextlib.contextmanager
def collective_errors():
    """Inside a distributed run, turn the error a collective raises when a peer is gone
    (torch.distributed's DistError, or gloo's and NCCL's RuntimeError) into LostPeers; a
    single process's errors pass untouched, so a bug keeps its traceback."""
    try:
        yield
    except RuntimeError as err:
        peer_gone = isinstance(err, dist.DistError) or (_world.distributed and any(
            k in str(err) for k in ("gloo", "NCCL", "Connection closed")))
        if isinstance(err, ProjectError) or not peer_gone:
            raise
        raise LostPeers(f"lost the other processes of the run ({first_line(err)}); the last "
                        "checkpoint is kept: run the same command again to resume") from None


def on_rank0(fn):
    """fn() on rank 0 alone (the run folder's writer); its result on every rank, or, if it
    raised, the same error on rank 0 and PeerStopped on the others, so that none waits."""
    result, error = None, None
    if _world.writer:
        try:
            result = fn()
        except Exception as err:
            error = err
    if _world.distributed:
        result, message = broadcast_object((result, None if error is None else str(error)))
        if message is not None and error is None:
            raise PeerStopped(f"rank 0 stopped: {message}")
    if error is not None:
        raise error
    return result


def broadcast_object(obj):
    """Rank 0's value of a picklable object on every rank."""
    if not _world.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
