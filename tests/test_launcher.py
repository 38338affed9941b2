"""One command for several processes (`python -m mlit.train --nproc-per-node N`, on torch's
elastic launcher; mlit/training/launcher.py): bad input is one line and exit 2 before any
worker starts; SIGTERM and Ctrl-C to the launcher stop every rank within seconds after the
same step, with one line and 130 / 143, and the same command resumes to the weights of an
unbroken run; under plain torchrun a cause is still one line of ours."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mlit.files.lock import FolderLock
from mlit.train import main as train

from helpers import PREEMPT, STEPS, assert_same_run, checkpoint, wait_for

pytestmark = pytest.mark.slow  # processes of their own: the full suite, not the quick tier

ROOT = Path(__file__).parents[1]
LAUNCH = ["--nproc-per-node", "2"]


def env() -> dict:
    return {**{k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"},
            "OMP_NUM_THREADS": "1"}


@pytest.fixture
def recipe(tmp_path) -> Path:
    path = tmp_path / "preempt.yaml"
    path.write_text(yaml.safe_dump({**PREEMPT, "train": {**PREEMPT["train"], "threads": 1}}))
    return path


@pytest.mark.parametrize("overrides, line", [
    (["pretrain.nosuch=1"], "pretrain.nosuch: unknown key"),
    (["pretrain.epochs=-1"], "pretrain.epochs: Input should be greater than or equal to 1 "
                             "(got -1)"),
    (["finetune.batch_size=63"], "finetune.batch_size=63: the global batch must divide among "
                                 "the 2 processes of this run"),
    (["data.dataset=cifar100", "data.root={tmp}/none"],
     "cifar100 not found under {tmp}/none (expected cifar-100-python/): put it there, or add "
     "data.download=true to download it"),
    (["data.dataset=folder", "data.root={tmp}"], "{tmp}/train: no images and no class "
                                                 "folders"),
], ids=["unknown-key", "negative-epochs", "batch-per-process", "no-dataset", "bad-folder"])
def test_bad_input_is_one_line_before_any_worker(recipe, tmp_path, capsys, overrides, line):
    (tmp_path / "train").mkdir()
    given = [o.format(tmp=tmp_path) for o in overrides]
    assert train([*LAUNCH, str(recipe), f"train.out={tmp_path / 'run'}", *given]) == 2
    assert capsys.readouterr().err.splitlines() == [f"mlit.train: {line.format(tmp=tmp_path)}"]
    assert not (tmp_path / "run" / "recipe.yaml").exists()  # nothing started


def test_a_missing_recipe_and_a_busy_folder_are_one_line_from_the_command(recipe, tmp_path):
    missing = subprocess.run([sys.executable, "-m", "mlit.train", *LAUNCH,
                              str(tmp_path / "nope.yaml")], cwd=ROOT, env=env(),
                             capture_output=True, text=True, timeout=120)
    assert (missing.returncode, missing.stderr) == (
        2, f"mlit.train: recipe {tmp_path / 'nope.yaml'} not found (the shipped ones are in "
           "recipes/)\n")
    out = tmp_path / "busy"
    with FolderLock(out):  # another job holds the folder
        busy = subprocess.run([sys.executable, "-m", "mlit.train", *LAUNCH, str(recipe),
                               f"train.out={out}"], cwd=ROOT, env=env(), capture_output=True,
                              text=True, timeout=120)
    assert (busy.returncode, busy.stderr) == (
        2, f"mlit.train: {out} is in use by process {os.getpid()} on {os.uname().nodename}: "
           "wait for it to finish, or choose another train.out\n")


def workers(launcher: int) -> list[int]:
    """The launcher's worker processes (each runs `-m mlit.train` itself)."""
    pids = []
    for tasks in Path(f"/proc/{launcher}/task").glob("*/children"):
        pids += [int(p) for p in tasks.read_text().split()]
    return pids


def stop_launcher(command: list[str], metrics: Path, records: int, signum: int,
                  group: bool) -> tuple[str, float, list[int]]:
    """Start the launcher, signal it in the epoch after `records` epoch lines, and return
    its stderr, how long it took to exit, and its workers."""
    proc = subprocess.Popen(command, cwd=ROOT, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= records,
             proc, f"{records} epochs")
    time.sleep(0.5)
    ranks = workers(proc.pid)
    assert len(ranks) == 2
    sent = time.time()
    os.killpg(proc.pid, signum) if group else os.kill(proc.pid, signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err
    return err, time.time() - sent, ranks


def test_sigterm_then_ctrl_c_to_the_launcher_lose_nothing(recipe, tmp_path):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    command = [sys.executable, "-m", "mlit.train", *LAUNCH, str(recipe)]
    done = subprocess.run([*command, f"train.out={straight}"], cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "mlit.train" not in done.stderr, done.stderr
    metrics = broken / "metrics.jsonl"
    for kind, records, signum, group in (("pretrain", 1, signal.SIGTERM, False),
                                         ("finetune", 3, signal.SIGINT, True)):
        err, took, ranks = stop_launcher([*command, f"train.out={broken}"], metrics, records,
                                         signum, group)
        step = checkpoint(broken, kind)["step"]
        assert step % STEPS, step  # inside an epoch
        assert err.splitlines() == [
            f"mlit.train: interrupted by {signum.name} in stage {kind} at step {step} of "
            f"{2 * STEPS} (epoch {step // STEPS + 1} of 2); the last good checkpoint is "
            f"{broken / kind / 'checkpoint.pt'} (step {step}, {step % STEPS} into epoch "
            f"{step // STEPS + 1}); run the same command again to resume"], err
        assert took < 20  # the workers stop after their step, not at the launcher's SIGKILL
        assert not [pid for pid in ranks if Path(f"/proc/{pid}").exists()]
    done = subprocess.run([*command, f"train.out={broken}"], cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert_same_run(straight, broken)


def test_under_plain_torchrun_a_bad_key_is_one_line_of_ours(recipe, tmp_path):
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", "-m", "mlit.train", str(recipe),
                           f"train.out={tmp_path}", "pretrain.nosuch=1"], cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=300)
    ours = [line for line in done.stderr.splitlines() if line.startswith(("mlit.train:", "mlit.train ["))]
    assert ours == ["mlit.train: pretrain.nosuch: unknown key"], done.stderr[-2000:]
    assert "exitcode  : 2" in done.stderr  # torchrun's own report follows (docs/distributed.md)


@pytest.mark.parametrize("argv, message", [
    (["recipes/quickstart.yaml", "--out", "runs/x"], "unrecognized arguments: --out"),
    ([*LAUNCH, "--rdzv-timeout", "0", "recipes/quickstart.yaml"],
     "argument --rdzv-timeout: '0' is not an integer of at least 1"),
])
def test_a_mistyped_flag_is_named(capsys, argv, message):
    with pytest.raises(SystemExit) as stop:
        train(argv)
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("flags, line", [
    (["--nnodes", "2"], "--nnodes 2 needs --rdzv-endpoint HOST:PORT: the node that hosts the "
                        "rendezvous, the same on every node"),
    (["--rdzv-endpoint", "localhost:abc"], "--rdzv-endpoint 'localhost:abc': expected "
                                           "HOST:PORT with a port from 1 to 65535"),
    (["--rdzv-endpoint", "localhost:99999"], "--rdzv-endpoint 'localhost:99999': expected"),
    (["--rdzv-endpoint", ":29500"], "--rdzv-endpoint ':29500': expected HOST:PORT"),
    (["--rdzv-backend", "static", "--nnodes", "2", "--rdzv-endpoint", "localhost:29500",
      "--node-rank", "5"], "--node-rank 5: must be below --nnodes 2 (0 to 1)"),
    (["--node-rank", "1", "--nnodes", "2", "--rdzv-endpoint", "localhost:29500"],
     "--node-rank 1: a c10d rendezvous gives each node its rank"),
    (["--nnodes", "2", "--rdzv-endpoint", "nohost.invalid:29500"],
     "--rdzv-endpoint nohost.invalid:29500: nohost.invalid does not resolve"),
])
def test_launcher_flags_that_do_not_fit_are_one_line_before_any_process(recipe, tmp_path,
                                                                        capsys, flags, line):
    assert train([*LAUNCH, *flags, str(recipe), f"train.out={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"mlit.train: {line}"), err
    assert not (tmp_path / "run").exists()


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("backend", ["c10d", "static"])
def test_nodes_that_never_meet_end_at_the_timeout_in_one_line(recipe, tmp_path, backend):
    """The second node never comes: the launcher gives up after --rdzv-timeout (the default
    is 600 s, beyond the subprocess's limit), with one line and none of torch's log."""
    endpoint = f"localhost:{unused_port()}"
    done = subprocess.run([sys.executable, "-m", "mlit.train", "--nproc-per-node", "1",
                           "--nnodes", "2", "--rdzv-backend", backend, "--rdzv-endpoint",
                           endpoint, "--rdzv-timeout", "3", str(recipe),
                           f"train.out={tmp_path / 'run'}"], cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=300)
    check = " and --rdzv-id" if backend == "c10d" else ""
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"mlit.train: the rendezvous at {endpoint} did not complete within --rdzv-timeout 3 s "
        f"(--nnodes 2, --nproc-per-node 1): check that every node runs the same command with "
        f"the same --rdzv-endpoint{check}, and that the endpoint's host accepts connections on "
        f"that port"]


def test_sigterm_while_the_rendezvous_blocks_is_served_in_seconds(recipe, tmp_path):
    """An endpoint that takes the connection and never answers holds torch's store client in
    native code, where Python's handlers cannot run; the launcher still ends on SIGTERM, and
    leaves no folder behind."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        endpoint = f"127.0.0.1:{silent.getsockname()[1]}"
        proc = subprocess.Popen([sys.executable, "-m", "mlit.train", "--nproc-per-node", "1",
                                 "--nnodes", "2", "--rdzv-endpoint", endpoint, str(recipe),
                                 f"train.out={tmp_path / 'run'}"], cwd=ROOT,
                                env={**env(), "TMPDIR": str(scratch)},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        connected, _, _ = select.select([silent], [], [], 120)  # the store client is waiting
        assert connected, "the launcher never reached the endpoint"
        sent = time.time()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143
    assert err.splitlines() == [
        f"mlit.train: interrupted by SIGTERM while the nodes met at {endpoint}; no checkpoint "
        f"yet: run the same command again to start over"]
    assert time.time() - sent < 60  # 5 s of grace; a blocked launcher would wait 600 s
    # the ranks' reports and torch's agent's logs went too (torch's compile cache may stay)
    assert [p.name for p in scratch.iterdir() if p.name.startswith(("mlit-", "torchelastic"))] \
        == []
