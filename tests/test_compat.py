"""Files written before the package was regrouped by layer (main at b8a91dc, before 0.1's
layered tree) still load, evaluate and resume: a run folder stopped after its first epoch, a
.safetensors export, an encoder-only export and an ONNX export of the finished run.

tests/fixtures/main_b8a91dc/ was written by that commit with
    python -m mlit.train recipes/quickstart.yaml model.name=mlit_micro pretrain.epochs=2 \
        finetune.epochs=2 pretrain.batch_size=64 finetune.batch_size=64 pretrain.eval_every=1 \
        finetune.eval_every=1 train.progress=false train.threads=2 [train.stop_after_epochs=1]
then `python -m mlit.export` of the unbroken run's checkpoints, and `python -m mlit.eval ... --json`
of the fine-tune checkpoint (eval_pt.json) and of the ONNX file (eval_onnx.json).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import mlit
from mlit import eval as eval_cli
from mlit.files import modelfile
from mlit.train import main as train

OLD = Path(__file__).parent / "fixtures" / "main_b8a91dc"


def test_an_old_run_folder_resumes_where_it_stopped(tmp_path):
    """Since steps draw from seeds keyed by the step (mlit/data/seeds.py), an old run goes on
    with other augmentations and masks than the old code drew, so it no longer ends on the old
    unbroken run's weights; it resumes, not restarts: its optimiser state, step count and
    first epoch's record carry on."""
    run = tmp_path / "run"
    shutil.copytree(OLD / "run", run)
    first_line = (run / "metrics.jsonl").read_text().splitlines()[0]
    assert train([str(run / "recipe.yaml"), f"train.out={run}",
                  "train.stop_after_epochs=null"]) == 0
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert lines[0] == first_line
    assert [(json.loads(x)["stage"], json.loads(x)["epoch"]) for x in lines] == [
        ("pretrain", 1), ("pretrain", 2), ("finetune", 1), ("finetune", 2)]
    pretrain = torch.load(run / "pretrain" / "checkpoint.pt", weights_only=True)
    steps = {int(s["step"]) for s in pretrain["optimizer"]["state"].values()}
    assert pretrain["step"] == 2 * json.loads(first_line)["step"] and steps == {pretrain["step"]}


@pytest.mark.parametrize("file, kind", [("model.safetensors", mlit.MLiT),
                                        ("encoder.safetensors", mlit.MLiTEncoder)])
def test_old_exports_load_as_the_same_models(file, kind):
    model = mlit.load(OLD / file)
    assert type(model) is kind and not model.training
    stored = modelfile.read(OLD / file).state
    assert {k: v for k, v in model.state_dict().items()}.keys() == stored.keys()
    assert all(torch.equal(v, stored[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("file, record", [("model.safetensors", "eval_pt.json"),
                                          ("model.onnx", "eval_onnx.json")])
def test_old_exports_evaluate_to_the_old_figures(tmp_path, capsys, file, record):
    pytest.importorskip("onnxruntime") if file.endswith(".onnx") else None
    assert eval_cli.main([str(OLD / file), "--json", "--out", str(tmp_path)]) == 0
    got = json.loads(capsys.readouterr().out)
    old = json.loads((OLD / record).read_text())
    assert got["images"] == old["images"]
    assert got["top1"] == pytest.approx(old["top1"], abs=1e-9)
    assert got["top5"] == pytest.approx(old["top5"], abs=1e-9)
    assert got["per_class_acc"] == pytest.approx(old["per_class_acc"], abs=1e-9)
    for layer, share in zip(got["expert_share"], old["expert_share"]):
        assert layer == pytest.approx(share, abs=1e-6)
