"""Preemption in one process (mlit/training/preemption.py): SIGTERM or SIGINT in the middle of
an epoch stops after the step in flight with a checkpoint of that step and one line that says
where; the same command resumes there and ends on the weights of a run never stopped,
bitwise, in either stage and either pipeline, whatever the number of loader workers; and a
recovery checkpoint every `train.checkpoint_minutes` bounds what kill -9 loses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mlit.train import main as train
from mlit.training.stage import StageRun

from helpers import PREEMPT, STEPS, assert_same_run, checkpoint, wait_for

pytestmark = pytest.mark.slow  # processes of their own: the full suite, not the quick tier

ROOT = Path(__file__).parents[1]


def recipe_file(tmp_path: Path, **data) -> Path:
    path = tmp_path / "preempt.yaml"
    path.write_text(yaml.safe_dump({**PREEMPT, "data": {**PREEMPT["data"], **data}}))
    return path


def signal_at(monkeypatch, kind: str, step: int, signum: int) -> None:
    """A real signal to this process while the stage `kind` takes its optimiser step `step`."""
    take = StageRun.train_one

    def step_then_signal(self, *args):
        take(self, *args)
        if self.kind == kind and self.step == step:
            os.kill(os.getpid(), signum)

    monkeypatch.setattr(StageRun, "train_one", step_then_signal)


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory):
    """The run never stopped, per pipeline, made once for the tests below."""
    runs = {}

    def run(pipeline: str) -> Path:
        if pipeline not in runs:
            tmp = tmp_path_factory.mktemp(f"unbroken_{pipeline}")
            out = tmp / "straight"
            assert train([str(recipe_file(tmp, pipeline=pipeline)), f"train.out={out}"]) == 0
            runs[pipeline] = out
        return runs[pipeline]
    return run


@pytest.mark.parametrize("pipeline", ["torchvision", "device"])
def test_a_signal_mid_epoch_in_each_stage_loses_nothing(tmp_path, monkeypatch, capsys,
                                                        pipeline, unbroken):
    recipe = recipe_file(tmp_path, pipeline=pipeline)
    straight, broken = unbroken(pipeline), tmp_path / "broken"
    capsys.readouterr()
    cases = [("pretrain", STEPS + 5, signal.SIGTERM), ("finetune", 3, signal.SIGINT)]
    for kind, step, signum in cases:
        with monkeypatch.context() as patch:
            signal_at(patch, kind, step, signum)
            assert train([str(recipe), f"train.out={broken}"]) == 128 + signum
        saved = checkpoint(broken, kind)
        assert saved["step"] == step and saved["epoch"] == step // STEPS
        into = step - step // STEPS * STEPS
        assert capsys.readouterr().err.splitlines() == [
            f"mlit.train: interrupted by {signum.name} in stage {kind} at step {step} of "
            f"{2 * STEPS} (epoch {step // STEPS + 1} of 2); the last good checkpoint is "
            f"{broken / kind / 'checkpoint.pt'} (step {step}, {into} into epoch "
            f"{step // STEPS + 1}); run the same command again to resume"]
    assert train([str(recipe), f"train.out={broken}"]) == 0
    assert_same_run(straight, broken)


def test_ctrl_c_with_loader_workers_then_kill_9_resume_to_the_unbroken_weights(tmp_path,
                                                                            unbroken):
    """Ctrl-C reaches the whole process group, the loader's workers too: they leave it to the
    main process, which stops after its step (130). Killed outright later, the run loses at
    most checkpoint_minutes: it resumes from the recovery checkpoint. Two loader workers and
    none draw the same augmentations, so the unbroken run here uses none."""
    recipe = recipe_file(tmp_path, pipeline="torchvision")
    straight, broken = unbroken("torchvision"), tmp_path / "broken"
    command = [sys.executable, "-m", "mlit.train", str(recipe), f"train.out={broken}",
               "data.num_workers=2", "train.checkpoint_minutes=0.002"]

    def saved_step(kind: str) -> int:  # the recovery checkpoint's, written every 0.12 s
        return checkpoint(broken, kind)["step"] if (broken / kind / "checkpoint.pt").exists() \
            else 0

    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    # the Ctrl-C lands early in epoch 2 however fast the run is: the run is frozen (SIGSTOP)
    # as soon as a checkpoint from epoch 2 shows, then signalled, then let go, so it can take
    # no more than the step in flight (a fixed wait once let a fast run finish the epoch)
    wait_for(lambda: saved_step("pretrain") > STEPS, proc, "a checkpoint in epoch 2")
    os.killpg(proc.pid, signal.SIGSTOP)
    os.killpg(proc.pid, signal.SIGINT)  # what a Ctrl-C in a terminal does
    os.killpg(proc.pid, signal.SIGCONT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.count("\n") == 1 and err.startswith("mlit.train: interrupted by SIGINT in "
                                                   "stage pretrain at step "), err
    assert checkpoint(broken, "pretrain")["step"] % STEPS  # inside epoch 2

    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    wait_for(lambda: saved_step("finetune") > STEPS, proc, "a finetune checkpoint in epoch 2")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert STEPS < checkpoint(broken, "finetune")["step"] < 2 * STEPS  # a recovery checkpoint
    assert train([str(recipe), f"train.out={broken}"]) == 0
    assert_same_run(straight, broken)
