"""One run on several GPUs or nodes (docs/distributed.md): torchrun's environment, the process
group, the one place a rank decides whether it writes files, and how the ranks agree on what
they report.

    python -m mlit.train --nproc-per-node 8 recipes/mmlit_s.yaml     (mlit/training/launcher.py)
    torchrun --standalone --nproc_per_node=8 -m mlit.train recipes/mmlit_s.yaml

torchrun (or the launcher) sets RANK, WORLD_SIZE and LOCAL_RANK; `init` joins the process
group (gloo for CPU tensors, NCCL for CUDA ones). Without it the world is one process and
nothing here does anything. The recipe's batch_size stays the global batch: every rank takes
batch_size / world of each global batch, drawn from one order per (seed, epoch)
(mlit/data/loaders.py). One cause is one line: checks of the input are `agreed` by every
rank, rank 0's refusals reach the others through `on_rank0`, a rank that stops on purpose
`announce`s it in the group's store, and under the launcher each rank reports its outcome to
a file (`write_report`) for the launcher to print.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from mlit.errors import FAULT, Fault, Interrupted, ProjectError, first_line


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


# -- one cause, one line ----------------------------------------------------------------------
class PeerStopped(ProjectError):
    """Another rank stopped on an error of its own; this one stops with it, silently, with
    that error's status: the other rank prints the cause, so one cause is one line, and no
    rank advises a resume that cannot help."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status

    def line(self) -> str:
        return ""


class LostPeers(Fault):
    """A collective failed because another process of the run went away (exit 1)."""

    rank_label = ""  # the run's condition, the same on every rank: rank 0 says it


STOPPED_KEY = "mlit/stopped/"
STORE_ANSWER_S = 5.0  # how long an interrupted rank waits to learn whether a peer had stopped


def announce(status: int, line: str, interrupted: bool) -> None:
    """Tell the other ranks, through the process group's store, that this rank stops on
    purpose (on a cause of its own, or interrupted), before its sockets close: their failing
    collective then becomes PeerStopped instead of advice to resume. Best effort: without a
    store nothing is announced."""
    store = _store()
    if store is not None:
        with contextlib.suppress(Exception):
            store.set(f"{STOPPED_KEY}{_world.rank}", json.dumps([status, line, interrupted]))


def stopped_peer(causes_only: bool = False) -> PeerStopped | None:
    """The first other rank that announced its stop (with causes_only, on a cause of its own,
    not an interrupt), as this rank's PeerStopped."""
    store = _store()
    for rank in range(_world.size):
        key = f"{STOPPED_KEY}{rank}"
        if rank == _world.rank or store is None:
            continue
        with contextlib.suppress(Exception):
            if store.check([key]):
                status, line, interrupted = json.loads(store.get(key))
                if not (causes_only and interrupted):
                    return PeerStopped(f"rank {rank} of {_world.size} stopped: {line}", status)
    return None


def teardown_or(err: BaseException) -> BaseException:
    """An interrupt that reaches a rank after another rank stopped on a cause of its own is
    the launcher tearing the job down (torchrun's agent sends SIGTERM to the ranks left), not
    a preemption: this rank then stops with that peer (PeerStopped), saying nothing, since a
    resume cannot help. Any other error is returned as it is."""
    if not (isinstance(err, Interrupted) and _world.distributed):
        return err
    # at most a few seconds: a store whose host is gone (a preempted node) would hold the
    # question until the group's timeout, and a preempted rank has seconds to leave
    found = []
    asking = threading.Thread(target=lambda: found.append(stopped_peer(causes_only=True)),
                              daemon=True)
    asking.start()
    asking.join(STORE_ANSWER_S)
    return (found[0] if found else None) or err


def _store():
    # the default group's key-value store (torchrun's agent hosts it, so it outlives ranks)
    if not (_world.distributed and dist.is_initialized()):
        return None
    try:
        return dist.distributed_c10d._get_default_store()
    except Exception:
        return None


@contextlib.contextmanager
def collective_errors():
    """Inside a distributed run, turn the error a collective raises when a peer is gone
    (torch.distributed's DistError, or gloo's and NCCL's RuntimeError) into PeerStopped when
    that peer stopped on purpose, or LostPeers; a single process's errors pass untouched, so
    a bug keeps its traceback."""
    try:
        yield
    except RuntimeError as err:
        peer_gone = isinstance(err, dist.DistError) or (_world.distributed and any(
            k in str(err) for k in ("gloo", "NCCL", "Connection closed")))
        if isinstance(err, ProjectError) or not peer_gone:
            raise
        stopped = stopped_peer()
        if stopped is not None:
            raise stopped from None
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
        failed = None if error is None else (str(error), getattr(error, "status", FAULT))
        result, failed = broadcast_object((result, failed))
        if failed is not None and error is None:
            raise PeerStopped(f"rank 0 stopped: {failed[0]}", failed[1])
    if error is not None:
        if _world.distributed and isinstance(error, ProjectError):
            error.rank_label = ""  # rank 0 speaks for the run (a busy folder, its recipe)
        raise error
    return result


def agreed(fn):
    """fn() on every rank (checks of the input, the same on each); if any rank's fn raised,
    every rank stops: one rank per distinct error raises it, the others PeerStopped. An error
    every rank raised alike is the run's and names no rank; one that differs names its rank.
    fn must not itself use the process group."""
    result, error = None, None
    try:
        result = fn()
    except Exception as err:
        if not isinstance(err, ProjectError) or not _world.distributed:
            raise
        error = err
    if not _world.distributed:
        return result
    outcomes = [None] * _world.size
    mine = None if error is None else (type(error).__name__, error.line(), error.status)
    dist.all_gather_object(outcomes, mine)
    failed = [(r, o) for r, o in enumerate(outcomes) if o is not None]
    if not failed:
        return result
    firsts = {}
    for rank, outcome in failed:
        firsts.setdefault(outcome, rank)
    if error is not None and firsts[mine] == _world.rank:
        alike = len(failed) == _world.size and len(firsts) == 1
        error.rank_label = "" if alike else str(_world)
        raise error
    rank, (_, line, status) = failed[0]
    raise PeerStopped(f"rank {rank} of {_world.size} stopped: {line}", status)
# -- what each rank tells `mlit.train --nproc-per-node` (mlit/training/launcher.py) ------------
REPORT_ENV = "MLIT_REPORT_DIR"  # set by the launcher: ranks write their outcome there


def report_dir() -> Path | None:
    folder = os.environ.get(REPORT_ENV)
    return Path(folder) if folder and torchrun_rank() is not None else None


def write_report(status: int, line: str, ending: str, rank_label: str) -> None:
    """This rank's outcome for the launcher, which prints the one line of the job: its ending
    is cause, peer (stopped with another rank), lost (a peer went away) or interrupt."""
    folder = report_dir()
    record = {"rank": torchrun_rank(), "status": status, "line": line, "ending": ending,
              "rank_label": rank_label}
    with contextlib.suppress(OSError):
        (folder / f"rank{torchrun_rank()}.json").write_text(json.dumps(record))


def read_reports(folder: Path) -> dict[int, dict]:
    reports = {}
    for path in folder.glob("rank*.json"):
        with contextlib.suppress(OSError, ValueError):
            record = json.loads(path.read_text())
            reports[int(record["rank"])] = record
    return reports


def broadcast_object(obj):
    """Rank 0's value of a picklable object on every rank."""
    if not _world.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
