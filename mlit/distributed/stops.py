"""One cause, one line: every rank checks its input and the ranks compare outcomes
(`agreed`), rank 0's refusals reach the others (`on_rank0`), a rank that stops on purpose
`announce`s it in the process group's store, and a rank that stops because another did
(`PeerStopped`), a collective that failed because a process went away (`LostPeers`) and a
SIGTERM from the launcher's teardown (`teardown_or`) say nothing of their own."""

from __future__ import annotations

import contextlib
import json
import threading

import torch.distributed as dist

from mlit.distributed.group import broadcast_object, world
from mlit.errors import FAULT, Fault, Interrupted, ProjectError, first_line


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
            store.set(f"{STOPPED_KEY}{world().rank}", json.dumps([status, line, interrupted]))


def stopped_peer(causes_only: bool = False) -> PeerStopped | None:
    """The first other rank that announced its stop (with causes_only, on a cause of its own,
    not an interrupt), as this rank's PeerStopped."""
    w = world()
    store = _store()
    for rank in range(w.size):
        key = f"{STOPPED_KEY}{rank}"
        if rank == w.rank or store is None:
            continue
        with contextlib.suppress(Exception):
            if store.check([key]):
                status, line, interrupted = json.loads(store.get(key))
                if not (causes_only and interrupted):
                    return PeerStopped(f"rank {rank} of {w.size} stopped: {line}", status)
    return None


def teardown_or(err: BaseException) -> BaseException:
    """An interrupt that reaches a rank after another rank stopped on a cause of its own is
    the launcher tearing the job down (torchrun's agent sends SIGTERM to the ranks left), not
    a preemption: this rank then stops with that peer (PeerStopped), saying nothing, since a
    resume cannot help. Any other error is returned as it is."""
    if not (isinstance(err, Interrupted) and world().distributed):
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
    if not (world().distributed and dist.is_initialized()):
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
        peer_gone = isinstance(err, dist.DistError) or (world().distributed and any(
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
    w = world()
    result, error = None, None
    if w.writer:
        try:
            result = fn()
        except Exception as err:
            error = err
    if w.distributed:
        failed = None if error is None else (str(error), getattr(error, "status", FAULT))
        result, failed = broadcast_object((result, failed))
        if failed is not None and error is None:
            raise PeerStopped(f"rank 0 stopped: {failed[0]}", failed[1])
    if error is not None:
        if w.distributed and isinstance(error, ProjectError):
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
        if not isinstance(err, ProjectError) or not world().distributed:
            raise
        error = err
    w = world()
    if not w.distributed:
        return result
    outcomes = [None] * w.size
    mine = None if error is None else (type(error).__name__, error.line(), error.status)
    dist.all_gather_object(outcomes, mine)
    failed = [(r, o) for r, o in enumerate(outcomes) if o is not None]
    if not failed:
        return result
    firsts = {}
    for rank, outcome in failed:
        firsts.setdefault(outcome, rank)
    if error is not None and firsts[mine] == w.rank:
        alike = len(failed) == w.size and len(firsts) == 1
        error.rank_label = "" if alike else str(w)
        raise error
    rank, (_, line, status) = failed[0]
    raise PeerStopped(f"rank {rank} of {w.size} stopped: {line}", status)
