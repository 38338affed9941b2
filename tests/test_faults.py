"""Faults a hostile user or a bad day brings: two runners on one folder, damaged or foreign
checkpoints and run files, a full disk, a folder the machine refuses. Each ends in one line
that names the file (exit 2 for bad input, 1 for a fault at run time), with the run's files
loadable and a resume that is bit-identical to an uninterrupted run. Bad recipes are
tests/test_recipe.py's, damaged datasets tests/test_datasets.py's."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mlit.files import checkpoint as ckpt
from mlit.files.jsonl import read_jsonl
from mlit.files.lock import FolderLock
from mlit.population import layout
from mlit.population.runner import run_local
from mlit.train import main
from mlit.training.recipe_run import run
from mlit.zoo.__main__ import main as zoo
from mlit.zoo.plan import plan
from mlit.zoo.recipe import load_zoo_recipe

from helpers import THREADS, TINY, one_line, tiny_recipe

ROOT = Path(__file__).parents[1]
SUPERVISED = {"supervised": {"epochs": 4, "batch_size": 256, "base_lr": 4e-3,
                             "warmup_epochs": 1, "checkpoint_every": 1}}


def metric_epochs(path: Path) -> list[int]:
    return [r["epoch"] for r in read_jsonl(path)]


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = ckpt.load(a)["model"], ckpt.load(b)["model"]
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The reference: the supervised tiny recipe, four epochs without a fault."""
    out = tmp_path_factory.mktemp("straight")
    run(tiny_recipe(out, SUPERVISED))
    return out / "supervised" / "checkpoint.pt"


# -- 1. one writer per folder ---------------------------------------------------------------
def wait_for(predicate, timeout=60.0):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        time.sleep(0.1)
    raise TimeoutError


@pytest.mark.slow
def test_a_second_runner_on_a_locked_folder_names_the_holder(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["recipes/quickstart.yaml", f"train.out={out}", *TINY, "pretrain.epochs=40",
            "pretrain.checkpoint_every=1", "finetune.epochs=2"]
    first = subprocess.Popen([sys.executable, "-m", "mlit.train", *args], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (out / "metrics.jsonl").exists() or first.poll() is not None)
        assert first.poll() is None, first.stderr.read()
        assert main(args) == 2
        line = one_line(capsys)
        assert f"{out} is in use by process {first.pid} on " in line
        assert line.endswith("wait for it to finish, or choose another train.out")
        first.send_signal(signal.SIGKILL)  # kill -9 mid-run: the kernel drops its lock
        first.wait()
    finally:
        first.kill()
    done = len(read_jsonl(out / "metrics.jsonl"))
    assert main([*args, "train.stop_after_epochs=2"]) == 0
    epochs = metric_epochs(out / "metrics.jsonl")
    assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) >= done


@pytest.mark.slow
def test_a_zoo_runner_skips_models_another_runner_holds(tmp_path, capsys):
    from test_zoo import write_recipe

    recipe = write_recipe(tmp_path, backbones=[{"kind": "supervised", "seeds": [0]}],
                          grid={"lr": [1e-3], "optimizer": ["adamw"], "head": ["linear"],
                                "head_seed": [1, 2]})
    zoo_dir = tmp_path / "zoo"
    runs = plan(load_zoo_recipe(recipe), zoo_dir)
    held = next(r for r in runs if r.backbone is not None)
    with FolderLock(zoo_dir / held.path):  # another process trains this one
        outcome = run_local(zoo_dir, runs)
    assert outcome["busy"] == [held.path]
    assert len(outcome["done"]) == len(runs) - 1
    assert run_local(zoo_dir, [held]) == {"done": [held.path]}


@pytest.mark.slow
def test_two_zoo_runners_on_one_folder_train_every_model_once(tmp_path):
    from test_zoo import write_recipe

    recipe = write_recipe(tmp_path, backbones=[{"kind": "supervised", "seeds": [0]}],
                          grid={"lr": [1e-3], "optimizer": ["adamw"], "head": ["linear"],
                                "head_seed": [1, 2]})
    zoo_dir = tmp_path / "zoo"
    cmd = [sys.executable, "-m", "mlit.zoo", "run", str(recipe), "--zoo-dir", str(zoo_dir)]
    runners = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True) for _ in range(2)]
    codes = sorted(p.wait(timeout=300) for p in runners)
    assert codes in ([0, 0], [0, 3]), [p.stderr.read() for p in runners]
    assert zoo(cmd[3:]) == 0  # whatever is left, in this process
    models = layout.model_dirs(zoo_dir)
    assert len(models) == 3
    for model_dir in models:
        epochs = [r["epoch"] for r in layout.read_results(model_dir)]
        assert epochs == sorted(set(epochs)) and epochs[0] == 0, (model_dir, epochs)
        assert layout.status(model_dir) == "done"


# -- 2. damaged or foreign checkpoints and run files -------------------------------------------------------------
def pretrained_checkpoint(tmp_path) -> Path:
    out = tmp_path / "pre"
    run(tiny_recipe(out, {"pretrain": {"epochs": 1, "batch_size": 256, "base_lr": 1e-3}}))
    return out / "pretrain" / "checkpoint.pt"


def test_finetune_init_of_another_model_names_both_models(tmp_path, capsys):
    source = pretrained_checkpoint(tmp_path)
    args = ["recipes/transfer_cifar10.yaml", "data.dataset=digits", f"train.out={tmp_path}/o",
            "train.progress=false", "data.num_workers=0"]
    assert main([*args, f"finetune.init={source}", "model.name=mlit_tiny"]) == 2
    assert one_line(capsys) == (
        f"mlit.train: finetune.init {source}: holds mlit_micro (embed_dim=16, depth=3), this "
        "recipe builds mlit_tiny (embed_dim=64, depth=3); first mismatching tensor: "
        "encoder.patch_embed.pos_embed is (1, 17, 16), expected (1, 17, 64)")
    foreign = {"random.pt": np.random.default_rng(0).bytes(3000),
               "empty.pt": b"", "truncated.pt": source.read_bytes()[:2000]}
    for name, data in foreign.items():
        (tmp_path / name).write_bytes(data)
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "other.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    for name, words in [("random.pt", "is not a readable checkpoint"),
                        ("empty.pt", "is not a readable checkpoint"),
                        ("truncated.pt", "is not a readable checkpoint"),
                        ("other.pt", "is not an mLiT checkpoint"),
                        ("list.pt", "is not an mLiT checkpoint")]:
        assert main([*args, f"finetune.init={tmp_path / name}", "model.name=mlit_micro"]) == 2
        line = one_line(capsys)
        assert f"{tmp_path / name}" in line and words in line, line


def flip_bytes_of(path: Path, tensor: torch.Tensor, count: int = 200) -> None:
    """Flip `count` bytes inside the stored bytes of `tensor` in the torch.save archive at
    `path`, leaving the archive itself readable (torch does not check its members)."""
    import zipfile

    data = bytearray(path.read_bytes())
    raw = tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes()
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if archive.read(info.filename) == raw:
                header = 30 + len(info.filename.encode()) + len(info.extra)  # local header
                start = info.header_offset + header
                break
        else:
            raise AssertionError("the tensor is not stored in the archive")
    for i in range(start, start + min(count, len(raw))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_damage_anywhere_in_a_checkpoint_is_refused_even_where_it_is_not_read(tmp_path, capsys):
    """linprobe.init reads a pre-training checkpoint's encoder alone: 200 flipped bytes in its
    decoder's weights are refused all the same (the digest of every tensor, written with it)."""
    source = pretrained_checkpoint(tmp_path)
    state = torch.load(source, weights_only=True)
    name = max((k for k in state["model"] if k.startswith("decoder.")),
               key=lambda k: state["model"][k].numel())
    flip_bytes_of(source, state["model"][name])
    assert torch.load(source, weights_only=True)["model"][name].ne(state["model"][name]).any()
    args = ["recipes/quickstart_linprobe.yaml", f"train.out={tmp_path}/probe",
            "model.name=mlit_micro", "train.progress=false", f"linprobe.init={source}"]
    assert main(args) == 2
    assert one_line(capsys) == (
        f"mlit.train: {source}: its tensors do not match the tensors_sha256 written with them: "
        "the file is damaged (use an earlier checkpoint, or train again)")


def test_a_damaged_resume_checkpoint_is_one_line(tmp_path, capsys):
    run(tiny_recipe(tmp_path, SUPERVISED, train={"stop_after_epochs": 1}))
    path = tmp_path / "supervised" / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ckpt.CheckpointError, match=f"{path} is not a readable checkpoint"):
        run(tiny_recipe(tmp_path, SUPERVISED))


@pytest.mark.slow
def test_resuming_with_another_recipe_is_refused_until_asked(tmp_path, capsys, straight):
    out = tmp_path / "run"
    base = [f"train.out={out}"]

    def cli(*extra):
        recipe = tmp_path / "sup.yaml"
        recipe.write_text(yaml.safe_dump({
            "model": {"name": "mlit_micro"}, "data": {"dataset": "digits", "num_workers": 0},
            "train": {"progress": False, "log_every": 2, "threads": THREADS}, **SUPERVISED}))
        return main([str(recipe), *base, *extra])

    assert cli("train.stop_after_epochs=1") == 0
    capsys.readouterr()
    saved = (out / "recipe.yaml").read_bytes()
    assert cli("model.hidden_last=2", "supervised.base_lr=1e-3") == 2
    line = one_line(capsys)
    assert line == (f"mlit.train: {out} holds checkpoints of another recipe (model.hidden_last: "
                    "4 -> 2; supervised.base_lr: 0.004 -> 0.001): add train.resume=false to "
                    "start over there, or choose another train.out")
    assert (out / "recipe.yaml").read_bytes() == saved
    # safe changes resume (and exactly): how long this call runs, how often it logs
    assert cli("train.stop_after_epochs=2", "supervised.eval_every=2", "train.log_every=3") == 0
    assert cli() == 0
    assert same_weights(out / "supervised" / "checkpoint.pt", straight)
    assert metric_epochs(out / "metrics.jsonl") == [1, 2, 3, 4]
    # train.resume=false starts over with the new recipe
    assert cli("model.hidden_last=2", "train.resume=false", "train.stop_after_epochs=1") == 0
    assert metric_epochs(out / "metrics.jsonl") == [1]
    assert ckpt.load(out / "supervised" / "checkpoint.pt")["model_config"]["hidden_last"] == 2


@pytest.mark.slow
def test_a_partial_last_metrics_line_is_dropped_and_resume_is_exact(tmp_path, capsys,
                                                                   straight):
    run(tiny_recipe(tmp_path, SUPERVISED, train={"stop_after_epochs": 2}))
    metrics = tmp_path / "metrics.jsonl"
    with metrics.open("a") as f:
        f.write('{"stage": "supervised", "epoch": 3, "train_lo')  # a write cut short
    orphan = tmp_path / "supervised" / ".checkpoint.pt.x1y2.tmp"  # a killed checkpoint write
    orphan.write_bytes(b"half a checkpoint")
    capsys.readouterr()
    run(tiny_recipe(tmp_path, SUPERVISED))
    assert "dropped a partial last line" in capsys.readouterr().err
    assert metric_epochs(metrics) == [1, 2, 3, 4]
    assert not orphan.exists()
    assert same_weights(tmp_path / "supervised" / "checkpoint.pt", straight)


def test_a_zoo_result_with_a_partial_last_line_resumes(tmp_path, capsys):
    from test_zoo import write_recipe

    recipe = write_recipe(tmp_path, backbones=[{"kind": "supervised", "seeds": [0]}],
                          grid={"lr": [1e-3], "optimizer": ["adamw"], "head": ["linear"],
                                "head_seed": [1]})
    zoo_dir = tmp_path / "zoo"
    runs = plan(load_zoo_recipe(recipe), zoo_dir)
    assert run_local(zoo_dir, runs[:1]) == {"done": [runs[0].path]}
    model_dir = zoo_dir / runs[0].path
    (model_dir / "status.json").unlink()  # as if it had died in its last epoch
    layout.set_status(model_dir, "running")
    with (model_dir / "result.json").open("a") as f:
        f.write('{"stage": "supervised", "ep')
    assert [r["epoch"] for r in layout.read_results(model_dir)] == [0, 1]
    assert "dropped a partial last line" in capsys.readouterr().err
    assert run_local(zoo_dir, runs) == {"done": [r.path for r in runs]}
    assert [r["epoch"] for r in layout.read_results(model_dir)] == [0, 1]


# -- 3. a full disk ---------------------------------------------------------------------------
def can_mount() -> bool:
    try:
        return subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs tmpfs /mnt"],
                              capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.slow
@pytest.mark.skipif(not can_mount(), reason="mounting a tmpfs in a user namespace "
                                            "(unshare -rm) is not permitted here")
def test_a_full_disk_is_one_line_and_the_run_resumes_exactly(tmp_path):
    done = subprocess.run(["unshare", "-rm", sys.executable,
                           str(ROOT / "tests" / "disk_full_scenarios.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    checkpoint, metrics, tb = results["checkpoint"], results["metrics"], results["tensorboard"]
    out = checkpoint["out"]
    assert checkpoint["code"] == 1 and checkpoint["stderr"] == [
        f"mlit.train: no space left on device while writing {out}/supervised/checkpoint.pt "
        f"in stage supervised at step 10 of 15 (end of epoch 2 of 3); "
        f"the last good checkpoint is {out}/supervised/checkpoint.pt (epoch 1)"]
    assert checkpoint["epoch"] == 1 and checkpoint["leftovers"] == []
    out = metrics["out"]
    assert metrics["code"] == 1 and metrics["stderr"] == [
        f"mlit.train: no space left on device while writing {out}/metrics.jsonl "
        f"in stage supervised at step 10 of 15 (end of epoch 2 of 3); "
        f"the last good checkpoint is {out}/supervised/checkpoint.pt (epoch 1)"]
    assert metrics["metric_epochs"] == [1] and metrics["leftovers"] == []
    out = tb["out"]
    assert tb["code"] == 1 and tb["stderr"] == [  # no traceback from the writer thread
        f"mlit.train: no space left on device while writing {out}/tb; the last good "
        "checkpoint is none yet"]
    for case in (checkpoint, metrics, tb):
        assert case["resumed"] == {"code": 0, "stderr": []} and case["identical"]


def test_a_stopped_runs_line_is_filled_by_each_layer_in_one_form():
    """errors.context: `where` is added inner to outer (the stage, then the zoo's model), the
    last good checkpoint comes from the innermost layer that knows it, what to do from the
    outermost, and a callable is called only when such an error passes."""
    import signal as signals

    from mlit.errors import NO_CHECKPOINT, Interrupted, context, nothing_to_resume
    from mlit.files.atomic import DiskFull

    def never():
        raise AssertionError("called without an error")

    with context(where=never, last_good=never):
        pass
    with pytest.raises(ValueError), context(where=never):  # not an error that stops a run
        raise ValueError("a bug")
    with pytest.raises(Interrupted) as err:
        with context(where="while training m (model 1 of 2)", resume="rerun the zoo"):
            with context(last_good="outer.pt"), context(where=lambda: "in stage pretrain",
                                                        last_good=lambda: "c.pt (epoch 1)"):
                raise Interrupted(signals.SIGINT)
    assert err.value.line() == ("interrupted by SIGINT in stage pretrain while training m "
                                "(model 1 of 2); the last good checkpoint is c.pt (epoch 1); "
                                "rerun the zoo")
    with pytest.raises(Interrupted) as err, context(where="in stage finetune",
                                                    last_good=NO_CHECKPOINT):
        raise Interrupted(signals.SIGTERM)
    assert err.value.line() == ("interrupted by SIGTERM in stage finetune; no checkpoint of "
                                "this stage yet: run the same command again to start it over")
    with pytest.raises(Interrupted) as err, nothing_to_resume(), context(where="at shape 3"):
        raise Interrupted(signals.SIGINT)
    assert err.value.line() == "interrupted by SIGINT at shape 3"
    with pytest.raises(DiskFull) as err, context(last_good=NO_CHECKPOINT):
        raise DiskFull("out/metrics.jsonl")
    assert err.value.line() == ("no space left on device while writing out/metrics.jsonl; "
                                "the last good checkpoint is none yet")
    assert DiskFull("x").line() == "no space left on device while writing x"  # not in a run
