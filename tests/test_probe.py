"""What an MAE codebase is judged by: linear probing as a stage (the encoder frozen, bit for bit),
the k-NN monitor of pre-training (equal to a brute-force vote), and mLiT inside timm (the
same parameters and logits as mlit's own model; an export loads through timm)."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import mlit
from mlit import export as export_cli
from mlit.files import modelfile
from mlit.train import main as train
from mlit.training.knn import knn_vote

from helpers import TINY

PROBE = [*TINY, "pretrain.epochs=2", "pretrain.warmup_epochs=0", "pretrain.batch_size=64",
         "linprobe.epochs=2", "linprobe.warmup_epochs=0", "linprobe.batch_size=64"]


def encoder_of(path) -> dict:
    return modelfile.read(path).encoder_state()


@pytest.mark.slow
def test_the_probe_trains_its_head_alone_and_resumes_exactly(tmp_path):
    out, stopped = tmp_path / "probe", tmp_path / "stopped"
    assert train(["recipes/quickstart_linprobe.yaml", *PROBE, f"train.out={out}"]) == 0
    before, after = encoder_of(out / "pretrain" / "checkpoint.pt"), \
        encoder_of(out / "linprobe" / "checkpoint.pt")
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)  # frozen, bit for bit
    probe = modelfile.read(out / "linprobe" / "checkpoint.pt")
    assert probe.kind == "linprobe" and "head.0.running_mean" in probe.state
    assert "head.0.weight" not in probe.state  # BatchNorm without affine parameters
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["stage"] == "linprobe"] == [1, 2]
    # stopped after the pre-training's first epoch and the probe's first, then resumed
    for _ in range(3):
        train(["recipes/quickstart_linprobe.yaml", *PROBE, f"train.out={stopped}",
               "train.stop_after_epochs=1"])
    a, b = (torch.load(o / "linprobe" / "checkpoint.pt", weights_only=True)["model"]
            for o in (out, stopped))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_a_probe_starts_from_an_encoder_export_or_from_random(tmp_path, capsys):
    out = tmp_path / "run"
    assert train(["recipes/quickstart.yaml", *TINY, "pretrain.epochs=1", "finetune.epochs=1",
                  "pretrain.warmup_epochs=0", "finetune.warmup_epochs=0",
                  f"train.out={out}"]) == 0
    encoder = tmp_path / "encoder.safetensors"
    assert export_cli.main([str(out / "pretrain" / "checkpoint.pt"), str(encoder),
                            "--encoder-only"]) == 0
    probe = ["recipes/quickstart_linprobe.yaml", *PROBE, "pretrain=null"]
    assert train([*probe, f"linprobe.init={encoder}", f"train.out={tmp_path / 'a'}"]) == 0
    theirs, ours = encoder_of(encoder), encoder_of(tmp_path / "a" / "linprobe" /
                                                   "checkpoint.pt")
    assert all(torch.equal(theirs[k], ours[k]) for k in theirs)
    lars = ["linprobe.optimizer=lars"] if importlib.util.find_spec("timm") else []  # MAE's
    assert train([*probe, "linprobe.init=random", *lars, f"train.out={tmp_path / 'b'}"]) == 0
    random = encoder_of(tmp_path / "b" / "linprobe" / "checkpoint.pt")
    assert not torch.equal(random["patch_embed.proj.weight"], ours["patch_embed.proj.weight"])
    capsys.readouterr()
    assert train(["recipes/quickstart.yaml", *TINY, "finetune.init=random", "pretrain=null",
                  f"train.out={tmp_path / 'c'}"]) == 2
    assert capsys.readouterr().err.strip() == (
        "mlit.train: finetune.init=random: only linprobe probes an untrained encoder")


def test_the_knn_vote_equals_a_brute_force_vote():
    gen = torch.Generator().manual_seed(0)
    train_x = F.normalize(torch.randn(300, 8, generator=gen), dim=1)
    train_y = torch.randint(0, 5, (300,), generator=gen)
    test_x = F.normalize(torch.randn(70, 8, generator=gen), dim=1)
    ours = knn_vote(train_x, train_y, test_x, 5, k=20, temperature=0.07, chunk=16)
    for i, x in enumerate(test_x):  # one test image at a time, in plain Python
        sims = [(float(x @ t), int(y)) for t, y in zip(train_x, train_y)]
        votes = [0.0] * 5
        for sim, label in sorted(sims, reverse=True)[:20]:
            votes[label] += torch.exp(torch.tensor(sim / 0.07)).item()
        assert int(ours[i]) == max(range(5), key=votes.__getitem__)


@pytest.mark.slow
def test_the_knn_monitor_logs_during_pretraining(tmp_path, capsys):
    out = tmp_path / "knn"
    assert train(["recipes/quickstart_linprobe.yaml", *PROBE, "linprobe=null",
                  "pretrain.knn_every=1", f"train.out={out}"]) == 0
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if "test_knn_acc" in r] == [1, 2]
    assert all(0 < r["test_knn_acc"] <= 1 and r["knn_s"] >= 0 for r in records)
    assert "test_knn_acc=" in capsys.readouterr().out  # the epoch line


def test_mlit_in_timm_has_mlits_parameters_logits_and_files(tmp_path):
    timm = pytest.importorskip("timm")
    ours = mlit.create_model("mlit_xxs", num_classes=10).eval()
    theirs = timm.create_model("mlit_xxs", num_classes=10).eval()
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == \
        [(k, v.shape) for k, v in theirs.state_dict().items()]
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(3, 3, 36, 36)
    logits, moe = ours(x)
    assert torch.equal(theirs(x), logits) and torch.equal(theirs.moe_loss, moe)
    assert theirs.forward_head(theirs.forward_features(x), pre_logits=True).shape == (3, 108)
    assert theirs.num_features == 108 and theirs.get_classifier() is theirs.head
    theirs.reset_classifier(0)
    assert theirs(x).shape == (3, 108)
    assert timm.create_model("mmlit_xxs")(x).shape == (3, 108)  # the MAE encoder, no head
    config = timm.data.resolve_data_config({}, model=theirs)
    assert config["input_size"] == (3, 36, 36) and config["mean"] == (0.5071, 0.4865, 0.4409)
    image = timm.data.create_transform(**config)(Image.new("RGB", (50, 40)))
    assert image.shape == (3, 36, 36)
    from timm.optim import create_optimizer_v2  # layer-wise decay through group_matcher

    optimizer = create_optimizer_v2(theirs, "adamw", lr=1e-3, layer_decay=0.9)
    scales = {round(g["lr_scale"], 6) for g in optimizer.param_groups}
    assert len(scales) == 10 and max(scales) == 1.0  # the 9 layers and the embedding below
    # the final norm and the head
    # a trained model's export, through timm alone: the same logits as mlit.load's
    export = tmp_path / "model.safetensors"
    model = mlit.create_model("mlit_micro", num_classes=10)
    model.encoder.norm.weight.data.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(1))
    torch.save({"model": model.state_dict(), "kind": "finetune", "model_name": "mlit_micro",
                "model_config": vars(model.cfg), "epoch": 1}, tmp_path / "run.pt")
    assert export_cli.main([str(tmp_path / "run.pt"), str(export)]) == 0
    loaded = timm.create_model("mlit_micro", pretrained=True, num_classes=10,
                               pretrained_cfg_overlay={"file": str(export), "num_classes": 10})
    x = torch.randn(2, 3, 12, 12)
    assert torch.equal(loaded.eval()(x), mlit.load(export)(x)[0])
