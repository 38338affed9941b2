"""One run on several processes (torchrun, gloo on the CPU, 2 ranks): the same parameters and
the same test accuracy as one process at the same global batch; one set of files, written by
rank 0; a killed rank, then the same command, ends where an unbroken run ends; and a rank
whose tokens skip an expert neither hangs nor fails."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

pytestmark = pytest.mark.slow  # processes of their own: the full suite, not the quick tier

ROOT = Path(__file__).parents[1]
# no randomness that depends on how the batch is split: no augmentation, no gate noise, no
# dropout; SGD, whose update does not magnify float noise on zero gradients as Adam's does
RECIPE = """\
name: ddp
model: {name: mlit_micro, noisy_gating: false, expert_dropout: 0.0}
data: {dataset: digits, num_workers: 0, pipeline: torchvision}
supervised:
  epochs: 2
  batch_size: 64
  optimizer: sgd
  base_lr: 0.2
  warmup_epochs: 0
  augment: {random_resized_crop: false, hflip: false}
train: {progress: false, log_every: 5, threads: 1}
"""


def env():
    return {**{k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"},
            "OMP_NUM_THREADS": "1"}


def torchrun(recipe: Path, out: Path, *extra, nproc=2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={nproc}", "-m", "mlit.train", str(recipe), f"train.out={out}",
            *extra]


def single(recipe: Path, out: Path, *extra) -> list[str]:
    return [sys.executable, "-m", "mlit.train", str(recipe), f"train.out={out}", *extra]


def run(cmd) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def weights(out: Path) -> dict:
    return torch.load(out / "supervised" / "checkpoint.pt", weights_only=False)["model"]


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ddp") / "ddp.yaml"
    path.write_text(RECIPE)
    return path


@pytest.fixture(scope="module")
def two_ranks(recipe, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The recipe on two ranks, start to end: the reference of several tests below."""
    out = tmp_path_factory.mktemp("two_ranks")
    return out, run(torchrun(recipe, out))


def test_two_ranks_equal_one_process_at_the_same_global_batch(recipe, two_ranks, tmp_path):
    one, (two, done) = tmp_path / "one", two_ranks
    run(single(recipe, one))
    a, b = weights(one), weights(two)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=2e-5, rtol=1e-4, msg=k)
    # evaluation: an unpadded shard per rank, counts summed: the same accuracy exactly
    sa, sb = (json.loads((o / "summary.json").read_text()) for o in (one, two))
    assert sb["test_acc"] == sa["test_acc"]
    assert abs(sb["test_loss"] - sa["test_loss"]) < 1e-4
    # rank 0 alone wrote: one metrics file (one line per epoch), one checkpoint, one TB run
    lines = (two / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert len(list((two / "tb").glob("events.out.tfevents.*"))) == 1
    assert sorted(p.name for p in (two / "supervised").iterdir()) == ["checkpoint.pt"]
    assert done.stdout.count('"test_acc"') == 1  # the summary line, once
    epoch_lines = [line for line in done.stdout.splitlines() if "] epoch " in line]
    assert len(epoch_lines) == 2, done.stdout  # rank 0 reports, the other rank is quiet


def rank_process(torchrun_pid: int, rank: int) -> int:
    """The pid of torchrun's worker of a rank (its environment says RANK)."""
    deadline = time.time() + 60
    while time.time() < deadline:
        for child in Path(f"/proc/{torchrun_pid}/task").glob("*/children"):
            for pid in child.read_text().split():
                try:
                    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                except OSError:
                    continue
                if f"RANK={rank}".encode() in environ:
                    return int(pid)
        time.sleep(0.2)
    raise AssertionError(f"no worker of rank {rank}")


def test_a_killed_rank_then_the_same_command_ends_as_an_unbroken_run(recipe, two_ranks,
                                                                    tmp_path):
    # a checkpoint after every epoch, which changes no weight: the straight run is two_ranks
    args = ["supervised.checkpoint_every=1"]
    (straight, _), broken = two_ranks, tmp_path / "broken"
    proc = subprocess.Popen(torchrun(recipe, broken, *args), cwd=ROOT, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    victim = rank_process(proc.pid, 1)
    deadline = time.time() + 300
    while not (broken / "metrics.jsonl").exists() or \
            len((broken / "metrics.jsonl").read_text().splitlines()) < 1:
        assert time.time() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    os.kill(victim, signal.SIGKILL)  # mid-epoch 2
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert "rank      : 1 (local_rank: 1)" in err and "(SIGKILL)" in err  # torchrun's report
    # the survivor, when it gets the chance before torchrun stops it, says one line
    survivor = [line for line in err.splitlines() if line.startswith("mlit.train:")]
    assert len(survivor) <= 1 and all("run the same command again" in s for s in survivor)
    run(torchrun(recipe, broken, *args))
    a, b = weights(straight), weights(broken)
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=1e-6, msg=k)


def skip_an_expert(rank: int, init_file: str, results: str) -> None:
    """One rank's half of a DDP step of an MoE layer whose rank-1 tokens skip expert 0."""
    from torch.nn.parallel import DistributedDataParallel

    from mlit.model.moe import SharedSwiGLUExperts

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=2)
    torch.manual_seed(0)
    experts = SharedSwiGLUExperts(8, 12, 3, impl="torch")
    model = DistributedDataParallel(experts)
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(rank))
    gates = torch.zeros(16, 3)
    gates[:, 1:] = 0.5  # experts 1 and 2 on both ranks
    if rank == 0:
        gates[:, 0], gates[:, 2] = 0.5, 0.0  # expert 0 on rank 0 alone
    model(x, gates).square().sum().backward()
    grads = {name: p.grad.clone() for name, p in experts.named_parameters()}
    torch.save(grads, f"{results}.{rank}")
    dist.barrier()  # neither leaves while the other still talks to it
    dist.destroy_process_group()


def test_a_rank_whose_tokens_skip_an_expert_finishes(tmp_path):
    import torch.multiprocessing as mp

    results = str(tmp_path / "grads")
    mp.spawn(skip_an_expert, args=(str(tmp_path / "init"), results), nprocs=2, join=True)
    g0, g1 = torch.load(f"{results}.0"), torch.load(f"{results}.1")
    for name in g0:  # DDP averaged every gradient, the skipped expert's slice included
        torch.testing.assert_close(g0[name], g1[name], msg=name)
    assert g0["expert_weight"][0].abs().sum() > 0  # rank 0's tokens reached expert 0


def stop_after_peer(rank: int, port: int, peer_interrupted: bool, results: str) -> None:
    """Rank 1 stops first (on a cause of its own, or interrupted); then rank 0 is
    interrupted by SIGTERM, as torchrun's agent does to the ranks left after one exits."""
    import contextlib
    import io

    from mlit import distributed
    from mlit.cli import run_command
    from mlit.errors import BadInput, Interrupted

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE="2")
    distributed.init()

    def stop():
        if rank == 1 and not peer_interrupted:
            raise BadInput("12 images of the evaluation split cannot be decoded")
        raise Interrupted(signal.SIGTERM)

    err = io.StringIO()
    if rank == 1:
        with contextlib.redirect_stderr(err):
            status = run_command("mlit.train", stop)
    dist.barrier()  # rank 1's stop is announced before rank 0's interrupt
    if rank == 0:
        with contextlib.redirect_stderr(err):
            status = run_command("mlit.train", stop)
    Path(f"{results}.{rank}").write_text(json.dumps([status, err.getvalue()]))
    dist.barrier()
    distributed.shutdown()


@pytest.mark.parametrize("peer_interrupted", [False, True], ids=["peer-cause", "preemption"])
def test_sigterm_after_a_peer_stopped_on_its_own_cause_is_silent(tmp_path, peer_interrupted):
    """The agent's teardown after rank 1 stopped on bad input is not a preemption: rank 0
    says nothing (rank 1 said the cause) and advises no resume; a SIGTERM to every rank (a
    preemption) is still rank 0's line."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = str(tmp_path / "outcome")
    mp.spawn(stop_after_peer, args=(port, peer_interrupted, results), nprocs=2, join=True)
    (status0, err0), (status1, err1) = (json.loads(Path(f"{results}.{r}").read_text())
                                        for r in (0, 1))
    if peer_interrupted:
        assert (status0, status1, err1) == (143, 143, "")
        assert err0.startswith("mlit.train: interrupted by SIGTERM"), err0
    else:
        assert (status0, err0) == (2, "")
        assert (status1, err1) == (2, "mlit.train [rank 1 of 2]: 12 images of the evaluation "
                                      "split cannot be decoded\n")


def test_compiled_training_under_ddp_matches_eager(recipe, tmp_path):
    """train.compile under torchrun: inductor compiles the DDP-wrapped module (the MoE as the
    dense GEMM, which `moe_impl: auto` takes under torch.compile) and ends where the eager DDP
    run of the dense mixture ends, to float precision; the checkpoint holds the module's own
    names and loads into an eager model."""
    import mlit

    # one encoder layer: each layer of another width is more C++ for inductor to compile (the
    # compiled run took 43 s on a cold cache with mlit_micro's three layers, 29 s with one);
    # the whole model under inductor and under Dynamo's training trace is tests/test_contracts.py's
    one_layer = ("model.depth=1", "model.expert_stages=[3]", "supervised.epochs=1")
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    run(torchrun(recipe, eager, "model.moe_impl=dense", *one_layer))
    run(torchrun(recipe, compiled, "train.compile=true", *one_layer))
    a, b = weights(eager), weights(compiled)
    assert not any(k.startswith(("_orig_mod", "module.")) for k in b)
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-4, rtol=1e-3, msg=k)
    model = mlit.create_model("mlit_micro", num_classes=10, noisy_gating=False,
                              expert_dropout=0.0, depth=1, expert_stages=(3,))
    assert model.load_state_dict(b, strict=True).missing_keys == []


def test_another_world_size_continues_the_same_global_order(recipe, two_ranks, tmp_path):
    """Two ranks for an epoch, then one process for the second: the run ends where two ranks
    for both epochs end (the order of an epoch depends on (seed, epoch) alone)."""
    (both, _), switched = two_ranks, tmp_path / "switched"
    run(torchrun(recipe, switched, "train.stop_after_epochs=1"))
    assert json.loads((switched / "metrics.jsonl").read_text().splitlines()[-1])["epoch"] == 1
    run(single(recipe, switched))
    a, b = weights(both), weights(switched)
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=2e-5, rtol=1e-4, msg=k)


def test_a_busy_folder_is_one_line_from_rank_0_alone(tmp_path):
    from mlit.files.lock import FolderLock

    recipe = tmp_path / "ddp.yaml"
    recipe.write_text(RECIPE)
    out = tmp_path / "busy"
    with FolderLock(out):  # another job holds the folder
        done = subprocess.run(torchrun(recipe, out), cwd=ROOT, env=env(),
                              capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    ours = [line for line in done.stderr.splitlines() if line.startswith(("mlit.train:",
                                                                          "mlit.train ["))]
    assert ours == [f"mlit.train: {out} is in use by process {os.getpid()} on "
                    f"{os.uname().nodename}: wait for it to finish, or choose another "
                    "train.out"], done.stderr[-2000:]
    assert "lost the other processes" not in done.stderr
