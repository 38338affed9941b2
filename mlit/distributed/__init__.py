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

group.py: the world and the collectives; stops.py: one cause, one line; reports.py: the
ranks' outcomes for the launcher.
"""

from mlit.distributed.group import (
    World,
    barrier,
    broadcast_object,
    device_of,
    init,
    leave,
    max_over_ranks,
    shutdown,
    sum_over_ranks,
    torchrun_rank,
    world,
)
from mlit.distributed.reports import REPORT_ENV, read_reports, report_dir, write_report
from mlit.distributed.stops import (
    LostPeers,
    PeerStopped,
    agreed,
    announce,
    collective_errors,
    on_rank0,
    stopped_peer,
    teardown_or,
)

__all__ = ["World", "barrier", "broadcast_object", "device_of", "init", "leave",
           "max_over_ranks", "shutdown", "sum_over_ranks", "torchrun_rank", "world",
           "REPORT_ENV", "read_reports", "report_dir", "write_report", "LostPeers",
           "PeerStopped", "agreed", "announce", "collective_errors", "on_rank0",
           "stopped_peer", "teardown_or"]
