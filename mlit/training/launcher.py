"""`python -m mlit.train --nproc-per-node N RECIPE [overrides]`: one run on several processes
from one command, on torch.distributed's elastic launcher (the API torchrun is built on).

Before any worker starts, the launcher checks the recipe, the data and the run folder once
(mlit/training/prechecks.py), so bad input is one line and exit 2 at once. It then starts N
workers per node (`python -m mlit.train RECIPE [overrides]` under torchrun's environment),
each of which reports its outcome to a file instead of printing it (distributed.write_report),
and ends with the job's one line and exit status: the cause a rank reported (naming the rank
only when ranks differ), a rank that died without a report (killed, or a bug's traceback
above), or, for SIGINT / SIGTERM to the launcher (which passes it on to every worker), where
the ranks stopped and the checkpoint they wrote (130 / 143). Plain `torchrun -m mlit.train`
works as before; it prints its own report around a failure (docs/distributed.md).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from mlit import distributed
from mlit.errors import FAULT, BadInput, ProjectError
from mlit.recipe.schema import load_recipe
from mlit.training.prechecks import check_inputs, check_run_folder
from mlit.training.run_folder import newest_checkpoint


@dataclass(frozen=True)
class Nodes:
    """Where the workers run: torchrun's flags of the same names."""
    nproc_per_node: int
    nnodes: int = 1
    rdzv_backend: str = "c10d"
    rdzv_endpoint: str = ""  # host:port of the rendezvous; localhost on one node
    rdzv_id: str = ""
    node_rank: int = 0  # static rendezvous only
    rdzv_timeout: int = 600  # seconds the nodes may take to meet (torchrun's default)

    @property
    def standalone(self) -> bool:
        """One node and no endpoint: the rendezvous is this machine's own (localhost:0)."""
        return self.nnodes == 1 and not self.rdzv_endpoint

    @property
    def processes(self) -> int:
        return self.nproc_per_node * self.nnodes

    def check(self) -> None:
        """The flags that fit together, before any process starts (BadInput, one line)."""
        if self.rdzv_endpoint:
            host, _, port = self.rdzv_endpoint.rpartition(":")
            if not host.strip("[]") or not port.isdigit() or not 1 <= int(port) <= 65535:
                raise BadInput(f"--rdzv-endpoint {self.rdzv_endpoint!r}: expected HOST:PORT "
                               "with a port from 1 to 65535, e.g. node0:29500")
        elif self.nnodes > 1:
            raise BadInput(f"--nnodes {self.nnodes} needs --rdzv-endpoint HOST:PORT: the node "
                           "that hosts the rendezvous, the same on every node")
        if self.rdzv_backend == "static" and not 0 <= self.node_rank < self.nnodes:
            raise BadInput(f"--node-rank {self.node_rank}: must be below --nnodes "
                           f"{self.nnodes} (0 to {self.nnodes - 1})")
        if self.rdzv_backend != "static" and self.node_rank:
            raise BadInput(f"--node-rank {self.node_rank}: a c10d rendezvous gives each node "
                           "its rank; --node-rank applies to --rdzv-backend static")
        if self.rdzv_endpoint:
            host = self.rdzv_endpoint.rpartition(":")[0].strip("[]")
            try:
                socket.getaddrinfo(host, None)
            except OSError as err:
                raise BadInput(f"--rdzv-endpoint {self.rdzv_endpoint}: {host} does not resolve "
                               f"({err.strerror}); name the node that hosts the rendezvous as "
                               f"the other nodes reach it") from None

    def unmet(self) -> BadInput:
        """The one line for a rendezvous that did not complete."""
        if self.standalone:
            return BadInput(f"the {self.processes} local processes did not meet within "
                            f"--rdzv-timeout {self.rdzv_timeout} s")
        return BadInput(
            f"the rendezvous at {self.rdzv_endpoint} did not complete within --rdzv-timeout "
            f"{self.rdzv_timeout} s (--nnodes {self.nnodes}, --nproc-per-node "
            f"{self.nproc_per_node}): check that every node runs the same command with the "
            f"same --rdzv-endpoint{' and --rdzv-id' if self.rdzv_backend == 'c10d' else ''}, "
            f"and that the endpoint's host accepts connections on that port")


class JobFailed(ProjectError):
    """The job's one line, chosen from what the ranks reported."""

    def __init__(self, status: int, line: str, rank_label: str = ""):
        super().__init__(line)
        self.status, self.rank_label = status, rank_label


def launch(nodes: Nodes, argv: list[str]) -> int:
    """Check the input once, run the workers, and return 0 or raise the job's JobFailed."""
    nodes.check()
    recipe = load_recipe(argv[0], argv[1:])
    check_inputs(recipe, nodes.processes)
    out = check_run_folder(recipe)
    from torch.distributed import DistNetworkError, DistStoreError
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousError
    from torch.distributed.launcher.api import elastic_launch

    with tempfile.TemporaryDirectory(prefix="mlit-ranks-") as reports, \
            reporting_to(reports):
        # as torchrun does, but a share of the cores rather than one thread per process
        os.environ.setdefault("OMP_NUM_THREADS",
                              str(max(1, (os.cpu_count() or 1) // nodes.nproc_per_node)))
        quiet_elastic_logs()
        workers_get_the_cpp_log_back()
        try:
            with served_while_blocked(nodes, out, Path(reports)):
                elastic_launch(launch_config(nodes, Path(reports)), sys.executable)(
                    "-m", "mlit.train", *argv)
            return 0
        except ChildFailedError as err:
            failures = {rank: f.exitcode for rank, f in err.failures.items()}
            raise outcome(distributed.read_reports(Path(reports)), failures, 0,
                          nodes.processes, out) from None
        except (RendezvousError, DistStoreError, DistNetworkError):  # static: the store's
            raise nodes.unmet() from None
        except SignalException as err:
            raise outcome(distributed.read_reports(Path(reports)), {}, int(err.sigval),
                          nodes.processes, out) from None


@contextlib.contextmanager
def served_while_blocked(nodes: Nodes, out: Path, reports: Path, grace: float = 5.0):
    """A signal is served within seconds while the nodes meet. Until the workers start, the
    launcher's own handlers (run_command's) answer SIGINT and SIGTERM; but a rendezvous
    blocked in torch's native code (a connection to an endpoint that does not answer) does
    not return to Python for them. A thread woken by the signal (signal.set_wakeup_fd) ends
    the launcher with the usual line when, `grace` seconds later, the handler still in place
    is the launcher's and it has not run (the reports' folder goes with it). Once the workers
    start, torch's agent has its own handlers, which stop the workers first, and the thread
    does nothing."""
    import shutil
    import threading

    ours = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    left = threading.Event()  # the launch returned or raised: the main thread is serving
    read, write = os.pipe()
    os.set_blocking(write, False)
    previous = signal.set_wakeup_fd(write, warn_on_full_buffer=False)

    def watch() -> None:
        with os.fdopen(read, "rb", buffering=0) as wakeups:
            while received := wakeups.read(64):  # b"" once the launch closed its end
                for signum in {s for s in received if s in ours}:
                    if signal.getsignal(signum) is not ours[signum]:
                        continue  # torch's agent serves it: the workers run
                    if not left.wait(grace):
                        print(f"mlit.train: interrupted by {signal.Signals(signum).name} "
                              f"while the nodes met at {nodes.rdzv_endpoint or 'this machine'}"
                              f"; {resume_advice(out)}", file=sys.stderr, flush=True)
                        shutil.rmtree(reports, ignore_errors=True)
                        os._exit(128 + signum)

    threading.Thread(target=watch, name="mlit-signal-watch", daemon=True).start()
    try:
        yield
    finally:
        left.set()
        signal.set_wakeup_fd(previous)
        os.close(write)


@contextlib.contextmanager
def reporting_to(folder: str):
    """The workers' environment names the folder they report to (distributed.write_report)."""
    os.environ[distributed.REPORT_ENV] = folder
    try:
        yield
    finally:
        os.environ.pop(distributed.REPORT_ENV, None)


def launch_config(nodes: Nodes, scratch: Path):
    """torch's LaunchConfig for the nodes; the agent's own files (its log folder, the
    workers' error files) go under `scratch`, removed with it, not left in /tmp."""
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.launcher.api import LaunchConfig

    standalone = nodes.standalone
    # the whole rendezvous within --rdzv-timeout, the store's connection included (torch's
    # default there is 60 s: a node started a minute before the host would give up); a
    # signal meanwhile is served by served_while_blocked
    configs = {"timeout": nodes.rdzv_timeout, "join_timeout": nodes.rdzv_timeout,
               "read_timeout": nodes.rdzv_timeout}
    if nodes.rdzv_backend == "static":
        configs["rank"] = nodes.node_rank
    return LaunchConfig(
        min_nodes=nodes.nnodes, max_nodes=nodes.nnodes, nproc_per_node=nodes.nproc_per_node,
        run_id=nodes.rdzv_id or (str(uuid.uuid4()) if standalone else "mlit"),
        rdzv_backend="c10d" if standalone else nodes.rdzv_backend,
        rdzv_endpoint="localhost:0" if standalone else nodes.rdzv_endpoint,
        rdzv_configs=configs,
        max_restarts=0,  # a rerun of the same command resumes; a restart would repeat a bad input
        monitor_interval=0.1, logs_specs=DefaultLogsSpecs(log_dir=str(scratch / "elastic")))


QUIETED = "MLIT_QUIETED_CPP_LOG"  # mlit/__init__.py turned torch's C++ log off for the launcher


def workers_get_the_cpp_log_back() -> None:
    """The workers start with the C++ log level the user had (mlit/__init__.py)."""
    if os.environ.pop(QUIETED, None):
        os.environ.pop("TORCH_CPP_LOG_LEVEL", None)


def quiet_elastic_logs() -> None:
    """The agent's own log lines (rendezvous, shutting down, failures): the launcher says
    what happened in one line instead."""
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("torch.distributed.elastic", "torch.distributed.launcher")):
            logging.getLogger(name).setLevel(logging.CRITICAL + 1)


def outcome(reports: dict[int, dict], failures: dict[int, int], signum: int, size: int,
            out: Path) -> JobFailed:
    """The job's line from the ranks' reports and exit codes: an interrupt's place, else the
    first cause a rank reported, else a rank that died without a report, else what the
    other ranks saw (a peer that stopped or went away)."""
    by_rank = sorted(reports.items())
    if signum:
        said = [r for _, r in by_rank if r["ending"] == "interrupt"]
        line = said[0]["line"] if said else (
            f"interrupted by {signal.Signals(signum).name} before the workers reported; "
            f"{resume_advice(out)}")
        return JobFailed(128 + signum, line)
    for _, report in by_rank:
        if report["ending"] in ("cause", "interrupt"):
            return JobFailed(report["status"], report["line"], report["rank_label"])
    for rank, code in sorted(failures.items()):
        if rank not in reports:
            how = (f"was killed by {signal.Signals(-code).name}" if code < 0 else
                   f"failed with exit status {code} (its traceback is above)")
            return JobFailed(FAULT, f"rank {rank} of {size} {how}; {resume_advice(out)}",
                             "")
    for ending in ("peer", "lost"):
        for _, report in by_rank:
            if report["ending"] == ending:
                return JobFailed(report["status"], report["line"], "")
    return JobFailed(FAULT, f"the workers failed without a report; {resume_advice(out)}")


def resume_advice(out: Path) -> str:
    last = newest_checkpoint(out)
    return (f"the last checkpoint is {last}: run the same command again to resume" if last
            else "no checkpoint yet: run the same command again to start over")
