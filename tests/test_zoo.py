"""A micro-zoo on digits: the plan, the layout, skipping, resuming, sharding, Ray."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from mlit.population import layout
from mlit.population.plan import shard
from mlit.population.runner import run_local, run_one
from mlit.zoo.__main__ import main
from mlit.zoo.plan import plan
from mlit.zoo.recipe import load_zoo_recipe

from helpers import THREADS

ROOT = Path(__file__).parents[1]
MICRO = {
    "name": "micro",
    "model": {"name": "mlit_micro"},
    # the batched pipeline (on the CPU here): the zoo's logic is under test, not PIL
    "pretrain_data": {"dataset": "digits", "num_workers": 0, "pipeline": "device"},
    "finetune_data": {"dataset": "digits", "num_workers": 0, "pipeline": "device"},
    "train": {"progress": False, "threads": THREADS, "log_every": 100},
    "backbones": [{"kind": "mae", "seeds": [0]}, {"kind": "supervised", "seeds": [0]}],
    "pretraining": {
        "mae": {"epochs": 1, "batch_size": 256, "base_lr": 4e-3},
        "supervised": {"epochs": 1, "batch_size": 256, "base_lr": 4e-3},
        "simclr": {"epochs": 1, "batch_size": 256, "base_lr": 4e-3,
                   "augment": {"color_jitter": 0.5, "grayscale": 0.2}}},
    "finetune": {"epochs": 2, "batch_size": 256, "base_lr": 1e-3, "schedule": "constant",
                 "weight_decay": 0.0, "momentum": 0.99, "label_smoothing": 0.1,
                 "augment": {"random_resized_crop": False, "hflip": False, "rotation": 15,
                             "cutmix": 1.0, "mixup": 0.8, "random_erasing": 0.25}},
    "finetune_model": {"drop_path": 0.1},
    "grid": {"lr": [1e-3], "optimizer": ["adamw", "sgd"], "head": ["linear"],
             "head_seed": [1, 2]},
}


def write_recipe(tmp_path, **changes) -> Path:
    tree = {**MICRO, **changes}
    path = tmp_path / "micro.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def test_default_zoo_plan_is_the_papers_grid():
    zoo = load_zoo_recipe(ROOT / "recipes/zoo.yaml")
    runs = plan(zoo)
    backbones = [r for r in runs if r.backbone is None]
    finetunes = [r for r in runs if r.backbone is not None]
    assert len(backbones) == 8 and len(finetunes) == 8 * 24
    assert {r.factors["pretraining"] for r in backbones} == {"mae", "supervised", "simclr"}
    for b in backbones:  # 24 distinct factor combinations per backbone
        children = [r for r in finetunes if r.backbone == b.path]
        combos = {(r.factors["lr"], r.factors["optimizer"], r.factors["head"],
                   r.factors["head_seed"]) for r in children}
        assert len(children) == len(combos) == 24
    assert len({r.path for r in runs}) == len(runs)
    ft = finetunes[0].recipe.finetune
    assert (ft.epochs, ft.batch_size, ft.schedule, ft.weight_decay, ft.label_smoothing) == \
        (50, 256, "constant", 0.0, 0.1)
    assert (ft.augment.cutmix, ft.augment.mixup, ft.augment.random_erasing) == (1.0, 0.8, 0.25)
    assert finetunes[0].recipe.model_settings().drop_path == 0.1
    assert {r.recipe.finetune.lr for r in finetunes} == {3e-3, 1e-3, 1e-4}
    # the zoo paper's A.1: fine-tunes crop as well, and rotate and flip
    aug = ft.augment
    assert aug.random_resized_crop and aug.hflip and aug.rotation == 15
    # its supervised ViTs: Table 5's regularisation, Table 4's optimizer
    sup = next(r.recipe for r in backbones if r.factors["pretraining"] == "supervised")
    stage = sup.supervised
    assert (stage.augment.mixup, stage.augment.cutmix, stage.augment.random_erasing,
            stage.label_smoothing, sup.model_settings().drop_path) == (0.8, 1.0, 0.25, 0.1, 0.1)
    assert (stage.optimizer, stage.lr, stage.weight_decay) == ("adamw", 1e-3, 1e-4)
    assert not stage.augment.hflip and stage.augment.random_resized_crop
    mae = next(r.recipe for r in backbones if r.factors["pretraining"] == "mae")
    assert mae.model_settings().drop_path == 0.0


def test_plan_json_lists_every_run_with_its_factors(tmp_path, capsys):
    assert main(["plan", str(write_recipe(tmp_path)), "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)
    assert len(runs) == 2 + 2 * 4
    ft = [r for r in runs if r["stage"] == "finetune"]
    assert {(r["backbone"], r["optimizer"], r["head_seed"]) for r in ft} == {
        (b, o, s) for b in ("pretraining/mae_seed0", "pretraining/supervised_seed0")
        for o in ("adamw", "sgd") for s in (1, 2)}
    assert all(r["name"] in r["path"] and f"seed{r['head_seed']}" in r["name"] for r in ft)


def test_sharding_covers_every_run_exactly_once():
    runs = plan(load_zoo_recipe(ROOT / "recipes/zoo.yaml"))
    for n in (1, 3, 7, 16):
        seen = [r.path for i in range(n) for r in shard(runs, i, n)]
        assert sorted(seen) == sorted(r.path for r in runs)
    with pytest.raises(ValueError, match="0 <= i < n"):
        from mlit.population.plan import parse_shard
        parse_shard("4/4")


@pytest.mark.slow
def test_micro_zoo_layout_skip_and_status(tmp_path, capsys):
    recipe = write_recipe(tmp_path)
    zoo_dir = tmp_path / "zoo"
    assert main(["run", str(recipe), "--zoo-dir", str(zoo_dir)]) == 0
    # layout: pretraining/<model>/ and finetuning/<pretrained>/<model>/
    ft = zoo_dir / "finetuning/mae_seed0/ft_lr1e-03_adamw_linear_seed1"
    for model_dir in (zoo_dir / "pretraining/mae_seed0", zoo_dir / "pretraining/supervised_seed0",
                      ft):
        assert (model_dir / "config.json").exists() and (model_dir / "result.json").exists()
    config = json.loads((ft / "config.json").read_text())
    assert config["factors"] == {"pretraining": "mae", "pretraining_seed": 0, "lr": 1e-3,
                                 "optimizer": "adamw", "head": "linear", "head_seed": 1}
    assert config["recipe"]["finetune"]["label_smoothing"] == 0.1
    assert config["model"]["drop_path"] == 0.1
    results = layout.read_results(ft)
    assert [r["epoch"] for r in results] == [0, 1, 2]
    assert all({"test_acc", "train_acc"} <= set(r) for r in results)
    assert layout.epochs_saved(ft) == [0, 1, 2]
    assert layout.epochs_saved(zoo_dir / "pretraining/mae_seed0") == [0, 1]
    # the loader helper
    cfg, res, state = layout.load(zoo_dir, "finetuning/mae_seed0/ft_lr1e-03_adamw_linear_seed1", 1)
    assert cfg["name"] == "ft_lr1e-03_adamw_linear_seed1" and res == results
    assert "head.weight" in state and state["head.weight"].shape == (10, 16)
    # epoch 0 of a fine-tune holds the backbone's encoder; head seeds differ only in the head
    _, _, backbone = layout.load(zoo_dir, "pretraining/mae_seed0")
    _, _, seed1 = layout.load(zoo_dir, "finetuning/mae_seed0/ft_lr1e-03_sgd_linear_seed1", 0)
    _, _, seed2 = layout.load(zoo_dir, "finetuning/mae_seed0/ft_lr1e-03_sgd_linear_seed2", 0)
    for name, tensor in seed1.items():
        if name.startswith("encoder."):
            assert torch.equal(tensor, seed2[name]) and torch.equal(tensor, backbone[name])
    assert not torch.equal(seed1["head.weight"], seed2["head.weight"])
    capsys.readouterr()
    # a second run skips everything
    assert main(["run", str(recipe), "--zoo-dir", str(zoo_dir)]) == 0
    assert json.loads(capsys.readouterr().err.splitlines()[-1]) == {"skipped": 10}
    assert main(["status", str(zoo_dir), "--json"]) == 0
    assert {k: len(v) for k, v in json.loads(capsys.readouterr().out).items()} == {"done": 10}


def test_a_killed_run_resumes_where_it_stopped(tmp_path):
    recipe = write_recipe(tmp_path)
    zoo_dir = tmp_path / "zoo"
    runs = plan(load_zoo_recipe(recipe), zoo_dir)
    assert run_one(zoo_dir, runs[0]) == "done"  # the MAE backbone
    target = next(r for r in runs if r.backbone == runs[0].path)
    # a process that is killed after its first epoch
    code = (f"import os, sys; sys.path.insert(0, {str(ROOT / 'tests')!r})\n"
            "from mlit.zoo import plan, recipe\nfrom mlit.population import runner, layout\n"
            f"runs = plan.plan(recipe.load_zoo_recipe({str(recipe)!r}), {str(zoo_dir)!r})\n"
            f"run = next(r for r in runs if r.path == {target.path!r})\n"
            "from mlit.training.stage import StageRun\n"
            "original = StageRun.save\n"
            "def save_then_die(self):\n"
            "    original(self)\n"
            "    os._exit(9)\n"
            "StageRun.save = save_then_die\n"
            f"runner.run_one({str(zoo_dir)!r}, run)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr
    model_dir = zoo_dir / target.path
    assert layout.status(model_dir) == "interrupted"
    assert [r["epoch"] for r in layout.read_results(model_dir)] == [0, 1]
    assert run_local(zoo_dir, [target]) == {"done": [target.path]}
    assert [r["epoch"] for r in layout.read_results(model_dir)] == [0, 1, 2]
    assert layout.epochs_saved(model_dir) == [0, 1, 2]


def test_simclr_backbone_and_shard_waiting(tmp_path, capsys):
    recipe = write_recipe(tmp_path, backbones=[{"kind": "simclr", "seeds": [3]}],
                          grid={**MICRO["grid"], "optimizer": ["adamw"], "head_seed": [1]})
    zoo_dir = tmp_path / "zoo"
    # shard 1/2 holds the fine-tune only: its backbone is shard 0's, so it waits
    assert main(["run", str(recipe), "--zoo-dir", str(zoo_dir), "--shard", "1/2"]) == 3
    assert "wait for backbones" in capsys.readouterr().err
    assert main(["run", str(recipe), "--zoo-dir", str(zoo_dir), "--shard", "0/2"]) == 0
    assert main(["run", str(recipe), "--zoo-dir", str(zoo_dir), "--shard", "1/2"]) == 0
    results = layout.read_results(zoo_dir / "pretraining/simclr_seed3")
    assert [r["epoch"] for r in results] == [0, 1] and "test_loss" in results[1]


@pytest.mark.slow
def test_ray_launcher_on_a_local_cpu_cluster(tmp_path, capsys):
    pytest.importorskip("ray")
    recipe = write_recipe(tmp_path, backbones=[{"kind": "supervised", "seeds": [0]}],
                          grid={**MICRO["grid"], "optimizer": ["adamw"]})
    zoo_dir = tmp_path / "zoo"
    assert main(["run", str(recipe), "--zoo-dir", str(zoo_dir), "--launcher", "ray",
                 "--ray-cpus", "2"]) == 0
    capsys.readouterr()
    assert main(["status", str(zoo_dir), "--json"]) == 0
    assert {k: len(v) for k, v in json.loads(capsys.readouterr().out).items()} == {"done": 3}


def test_bad_zoo_recipe_names_the_key(tmp_path, capsys):
    recipe = write_recipe(tmp_path)
    assert main(["plan", str(recipe), "grid.lrs=[1]"]) == 2
    assert capsys.readouterr().err == "mlit.zoo: grid.lrs: unknown key\n"
    bad = write_recipe(tmp_path, backbones=[{"kind": "simclr", "seeds": [0]}],
                       pretraining={"mae": MICRO["pretraining"]["mae"]})
    assert main(["plan", str(bad)]) == 2
    assert "needs pretraining.simclr" in capsys.readouterr().err
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    assert main(["plan", str(broken)]) == 2
    assert capsys.readouterr().err.startswith(
        f"mlit.zoo: {broken}: not valid YAML at line 2, column 1 (")
