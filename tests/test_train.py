"""The training runner (mlit/training/): a digits run that learns, exact resume, stages in
order, a non-finite loss, the CIFAR on-disk format, compiled training, every arrangement."""

import json
import re

import numpy as np
import pytest
import torch

from mlit.data.catalogue import build_dataset
from mlit.data.datasets import CIFAR100
from mlit.data.errors import DatasetMissing
from mlit.files import checkpoint as ckpt
from mlit.train import main
from mlit.training.engine import NonFiniteLoss
from mlit.training.recipe_run import run

from helpers import THREADS, tiny_recipe, write_cifar100

SUPERVISED = {"supervised": {"epochs": 4, "batch_size": 256, "base_lr": 4e-3,
                             "warmup_epochs": 1, "checkpoint_every": 1,
                             "augment": {"hflip": False, "mixup": 0.8, "cutmix": 1.0,
                                         "rotation": 10, "random_erasing": 0.25},
                             "label_smoothing": 0.1}}
PRETRAIN = {"pretrain": {"epochs": 4, "batch_size": 256, "base_lr": 4e-3, "warmup_epochs": 1,
                         "checkpoint_every": 1}}


@pytest.mark.slow
def test_digits_run_learns_well_above_chance(tmp_path):
    recipe = tiny_recipe(tmp_path, {"supervised": {
        "epochs": 12, "batch_size": 64, "base_lr": 4e-3, "warmup_epochs": 1, "eval_every": 4,
        "augment": {"crop_scale": [0.7, 1.0], "hflip": False}}}, model_name="mlit_tiny")
    summary = run(recipe)
    assert summary["test_acc"] > 0.6, summary  # chance is 0.1
    curve = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in curve] == list(range(1, 13))
    assert curve[-1]["train_loss"] < 0.6 * curve[0]["train_loss"]
    accs = [r["test_acc"] for r in curve if "test_acc" in r]
    assert len(accs) == 3 and accs[-1] > accs[0]
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["test_acc"] == summary["test_acc"] and 0 <= saved["test_acc"] <= 1
    assert (tmp_path / "recipe.yaml").exists() and any((tmp_path / "tb").iterdir())


@pytest.mark.parametrize("stages,pipeline", [(SUPERVISED, "torchvision"),
                                             (PRETRAIN, "torchvision"), (SUPERVISED, "device")],
                         ids=["supervised", "mae", "supervised-device-pipeline"])
def test_two_epochs_resume_two_epochs_equals_four_straight(tmp_path, stages, pipeline):
    data = {"pipeline": pipeline}
    straight = run(tiny_recipe(tmp_path / "a", stages, data=data))
    first = run(tiny_recipe(tmp_path / "b", stages, train={"stop_after_epochs": 2}, data=data))
    assert first["incomplete"] in stages
    resumed = run(tiny_recipe(tmp_path / "b", stages, data=data))
    kind = next(iter(stages))
    a = ckpt.load(tmp_path / "a" / kind / "checkpoint.pt")
    b = ckpt.load(tmp_path / "b" / kind / "checkpoint.pt")
    assert a["epoch"] == b["epoch"] == 4 and a["step"] == b["step"]
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert straight == resumed
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(l)["epoch"] for l in lines] == [1, 2, 3, 4]


def test_finished_stages_are_skipped_and_finetune_starts_from_pretrain(tmp_path):
    stages = {**PRETRAIN, "finetune": {**SUPERVISED["supervised"], "epochs": 1}}
    run(tiny_recipe(tmp_path, stages))
    pre = ckpt.load(tmp_path / "pretrain" / "checkpoint.pt")
    mtime = (tmp_path / "pretrain" / "checkpoint.pt").stat().st_mtime_ns
    ckpt_path = tmp_path / "finetune" / "checkpoint.pt"
    ckpt_path.unlink()  # redo the fine-tune only
    run(tiny_recipe(tmp_path, stages, train={"stop_after_epochs": 1}))
    assert (tmp_path / "pretrain" / "checkpoint.pt").stat().st_mtime_ns == mtime
    # the fine-tune's optimiser saw one epoch from the pre-trained patch embedding
    fine = ckpt.load(ckpt_path)
    assert fine["epoch"] == 1
    assert not torch.equal(pre["model"]["encoder.patch_embed.proj.weight"],
                           fine["model"]["encoder.patch_embed.proj.weight"])


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path,
                                                                         monkeypatch):
    run(tiny_recipe(tmp_path, SUPERVISED, train={"stop_after_epochs": 1}))
    path = tmp_path / "supervised" / "checkpoint.pt"
    good = path.read_bytes()
    import mlit.training.engine

    original = mlit.training.engine.loss_parts

    def poisoned(*args, **kwargs):  # from the resumed epoch on, the loss is NaN
        parts = original(*args, **kwargs)
        return {**parts, "loss": parts["loss"] * float("nan")}

    monkeypatch.setattr(mlit.training.engine, "loss_parts", poisoned)
    with pytest.raises(NonFiniteLoss) as err:
        run(tiny_recipe(tmp_path, SUPERVISED))
    assert 5 <= err.value.step < 10  # epoch 2 (5 steps an epoch)
    assert err.value.where.startswith("in stage supervised at step ")
    assert err.value.last_good == f"{path} (epoch 1)"
    assert path.read_bytes() == good


def test_cli_reports_nan_on_one_line(tmp_path, capsys):
    code = main(["recipes/quickstart.yaml", f"train.out={tmp_path}", "model.name=mlit_micro",
                 "pretrain.epochs=2", "pretrain.base_lr=1e30", "pretrain.batch_size=256",
                 "train.progress=false", "pretrain.warmup_epochs=0", "train.log_every=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert re.fullmatch(r"mlit.train: the loss became non-finite \(step \d+\) in stage pretrain "
                        r"at step \d+ of \d+ \(epoch 1 of 2\); the last good checkpoint is none "
                        r"yet", err[-1]), err[-1]


def test_cifar_loader_reads_the_real_on_disk_format(tmp_path):
    arrays = write_cifar100(tmp_path / "data")
    dataset = build_dataset("cifar100", str(tmp_path / "data"), True, None)
    assert isinstance(dataset, CIFAR100) and len(dataset) == 64
    img, label = dataset[5]
    data, fine = arrays["train"]
    assert label == fine[5]
    assert (np.asarray(img)[:, :, 0].reshape(-1) == data[5, :1024]).all()  # red plane first
    recipe = tiny_recipe(tmp_path / "out", {"supervised": {**SUPERVISED["supervised"],
                                                           "epochs": 1, "batch_size": 32}},
                         data={"dataset": "cifar100", "root": str(tmp_path / "data")})
    summary = run(recipe)
    assert summary["stages"]["supervised"]["epoch"] == 1 and 0 <= summary["test_acc"] <= 1


def test_missing_dataset_is_one_clear_line(tmp_path, capsys):
    with pytest.raises(DatasetMissing, match="data.download=true"):
        build_dataset("cifar10", str(tmp_path), True, None)
    assert main(["recipes/scratch_cifar100.yaml", f"data.root={tmp_path}/nothing",
                 f"train.out={tmp_path}/o"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"cifar100 not found under {tmp_path}/nothing" in err and "cifar-100-python/" in err


# the quick tier trains the default arrangement; the full suite all three
@pytest.mark.parametrize("shared", ["v_w2", *(pytest.param(s, marks=pytest.mark.slow)
                                              for s in ("w_w2", "w_v"))])
def test_the_quickstart_trains_every_sharing_arrangement(tmp_path, shared):
    """Table 9's arrangements through the user's command: MAE, then fine-tuning."""
    assert main(["recipes/quickstart.yaml", f"train.out={tmp_path}", f"model.shared={shared}",
                 "pretrain.epochs=2", "finetune.epochs=1", "finetune.warmup_epochs=0",
                 "train.progress=false", f"train.threads={THREADS}"]) == 0
    state = ckpt.load(tmp_path / "finetune" / "checkpoint.pt")
    assert state["model_config"]["shared"] == shared
    own = state["model"]["encoder.layers.2.moe.experts.expert_weight"]  # 5 experts, h = 32
    assert own.shape == ((5, 32, 64) if shared == "w_v" else (5, 64, 32))  # (E, in, out)
    curve = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    pre = [r["train_loss"] for r in curve if r["stage"] == "pretrain"]
    assert pre[-1] < pre[0]
