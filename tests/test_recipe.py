"""Recipes: every shipped recipe builds, the paper's values hold, overrides reach any field,
and every kind of bad recipe (a key, a type, a range, YAML that is not clean, a binary file,
a device that is not there) is one line naming the key or the line."""

import subprocess
import sys
from pathlib import Path

import pytest

from mlit.recipe.reading import RecipeError
from mlit.recipe.schema import load_recipe
from mlit.train import main

ROOT = Path(__file__).parents[1]
RECIPES = sorted(p for p in (ROOT / "recipes").glob("*.yaml")
                 if not p.stem.startswith(("zoo", "shape_sweep")))  # their own loaders


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_every_shipped_recipe_builds_its_model_and_optimizer(path):
    from mlit.training.optim import build_optimizer
    from mlit.training.stage_model import build_stage_model

    recipe = load_recipe(path)
    for kind, stage in recipe.stages():
        model = build_stage_model(recipe, kind, stage, None)
        optimizer = build_optimizer(model, stage)
        trained = [p for p in model.parameters() if p.requires_grad]  # a probe: its head
        assert sum(len(g["params"]) for g in optimizer.param_groups) == len(trained) > 0


def test_paper_recipes_hold_the_tables():
    s = load_recipe(ROOT / "recipes/mmlit_s.yaml")
    assert (s.pretrain.epochs, s.pretrain.warmup_epochs, s.pretrain.batch_size) == (4000, 200, 840)
    assert (s.finetune.epochs, s.finetune.batch_size, s.finetune.layer_decay) == (300, 448, 0.9)
    assert s.finetune.augment.auto_augment == "cifar10"
    xxs = load_recipe(ROOT / "recipes/mmlit_xxs.yaml")
    assert (xxs.pretrain.epochs, xxs.pretrain.batch_size) == (8000, 1280)
    svhn = load_recipe(ROOT / "recipes/transfer_svhn.yaml")
    assert (svhn.finetune.base_lr, svhn.finetune.batch_size, svhn.finetune.warmup_epochs) == \
        (2.5e-4, 256, 10)
    assert svhn.finetune.augment.auto_augment == "svhn"
    assert load_recipe(ROOT / "recipes/scratch_cifar100.yaml").supervised.base_lr == 2e-4


def test_dotted_overrides_reach_any_field():
    r = load_recipe(ROOT / "recipes/quickstart.yaml",
                    ["finetune.epochs=3", "finetune.augment.mixup=0.8", "model.head=mlp",
                     "train.amp=fp32", "finetune.betas=[0.8, 0.9]", "data.root=/x"])
    assert r.finetune.epochs == 3 and r.finetune.augment.mixup == 0.8
    assert r.model_settings().head == "mlp" and r.train.amp == "fp32"
    assert r.finetune.betas == (0.8, 0.9) and r.data.root == "/x"


@pytest.mark.parametrize("override,message", [
    ("finetune.epoch=3", "finetune.epoch: unknown key"),
    ("finetune.epochs=three", "finetune.epochs: "),
    ("finetune.epochs=0", "finetune.epochs: "),
    ("train.amp=fp8", "train.amp: "),
    ("data.dataset=imagenet", "data.dataset: "),
    ("finetune.augment.auto_augment=cifar", "finetune.augment.auto_augment: "),
    ("model.num_heads=5", "model.embed_dim=16: must be divisible by num_heads=5"),
    ("model.top_k=4", "model.top_k=4"),
    ("model.widht=3", "model.widht: unknown model field; known fields: cv_epsilon, "),
    ("model.name=mlit_m", "model.name='mlit_m': unknown model; choose one of mlit_s, mlit_xs"),
    ("trian.seed=1", "trian: unknown key"),
    ("finetune.epochs.max=3", "finetune.epochs: not a section"),
    ("finetune.warmup_epochs=99", "warmup_epochs=99.0 exceeds epochs=30"),
    ("finetune.knn_every=1", "finetune.knn_every=1: the k-NN monitor watches pre-training"),
    ("noequals", "expected key=value"),
    ("model.mask_ratio=abc", "model.mask_ratio='abc': must be a finite number"),
    ("model.mask_ratio=0.0", "model.mask_ratio=0.0: must leave at least one of the 16 patches "
                             "visible and one masked"),
    ("model.mask_ratio=0.99", "model.mask_ratio=0.99: must leave at least one"),
    ("model.expert_dropout=.nan", "model.expert_dropout=nan: must be a finite number"),
    ("model.depth=2.5", "model.depth=2.5: must be an integer"),
    ("pretrain.base_lr=.inf", "pretrain.base_lr: Input should be a finite number"),
    ("finetune.augment.rotation=.nan", "finetune.augment.rotation: Input should be a finite"),
    ("finetune.augment.crop_scale=[0.9, 0.2]", "finetune.augment.crop_scale: needs 0.0 <= low "
                                               "<= high <= 1.0 (got [0.9, 0.2])"),
    ("finetune.augment.crop_scale=[0.0, 0.5]", "finetune.augment.crop_scale: the smallest crop"),
    ("pretrain.betas=[0.9, 1.5]", "pretrain.betas: each beta must be in [0, 1)"),
    ("train.device=gpu0", "train.device: 'gpu0' is not a device mlit runs on"),
    ("train.device=meta", "train.device: 'meta' is not a device mlit runs on"),
    ("=3", "override '=3': no key before '='"),
    ("finetune..epochs=3", "override 'finetune..epochs=3': no key before '=' (or an empty part"),
    ("finetune.epochs=[1,", "override 'finetune.epochs=[1,': not valid YAML"),
])
def test_bad_recipe_input_names_the_key(override, message):
    with pytest.raises(RecipeError) as err:
        load_recipe(ROOT / "recipes/quickstart.yaml", [override, "model.name=mlit_micro"]
                    if override.startswith("model.num_heads") else [override])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_recipe_and_missing_init(tmp_path, capsys):
    assert main([str(tmp_path / "nope.yaml")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main([str(ROOT / "recipes/transfer_cifar10.yaml"), "data.dataset=digits",
                 f"finetune.init={tmp_path}/none.pt", f"train.out={tmp_path}/o",
                 "model.name=mlit_micro", "train.progress=false"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "none.pt does not exist" in err


def test_cli_exits_2_with_one_line_and_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mlit.train", "recipes/quickstart.yaml",
                           "pretrain.batch_sise=3", f"train.out={tmp_path}"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr == "mlit.train: pretrain.batch_sise: unknown key\n"
    assert not (tmp_path / "recipe.yaml").exists()  # stopped before any work


def test_table9_recipes_are_mmlit_s_with_another_arrangement():
    from mlit.training.resume import changed_fields

    base = load_recipe(ROOT / "recipes/mmlit_s.yaml")
    for shared in ("v_w2", "w_w2", "w_v"):
        recipe = load_recipe(ROOT / f"recipes/ablation_sharing_{shared}.yaml")
        assert recipe.name == f"ablation_sharing_{shared}"
        expected = [] if shared == "v_w2" else [("model.shared", "v_w2", shared)]
        assert changed_fields(base, recipe) == expected


def test_a_recipe_base_merges_sections_and_refuses_cycles(tmp_path):
    (tmp_path / "a.yaml").write_text("model: {name: mlit_micro}\ndata: {dataset: digits}\n"
                                     "supervised: {epochs: 3, batch_size: 8, base_lr: 1.0e-3}\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nsupervised: {epochs: 5}\n")
    recipe = load_recipe(tmp_path / "b.yaml")
    assert (recipe.name, recipe.supervised.epochs, recipe.supervised.batch_size) == ("b", 5, 8)
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    with pytest.raises(RecipeError, match="a.yaml: base: b.yaml leads back to itself"):
        load_recipe(tmp_path / "b.yaml")


@pytest.mark.parametrize("text,message", [
    ("name: x\npretrain: {epochs: 1}\nmodel: {name: mlit_s}\npretrain: {epochs: 2}\n",
     "duplicate key 'pretrain' at line 4 (first at line 2)"),
    ("supervised:\n  epochs: 3\n  batch_size: 8\n  epochs: 4\n",
     "duplicate key 'epochs' at line 4 (first at line 2)"),
    ("supervised: {epochs: 3\n", "not valid YAML at line 2, column 1 ("),
    ("model:\n  name: mlit_s\n   depth: 3\n", "not valid YAML at line 3, column 9 ("),
])
def test_recipe_files_that_are_not_clean_yaml(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)
    assert "\n" not in str(err.value)


def test_a_binary_recipe_file(tmp_path):
    path = tmp_path / "model.yaml"
    path.write_bytes(b"\x80\x03}q\x00(X\x05\x00\x00\x00modelq\x01")
    with pytest.raises(RecipeError, match=f"^{path}: not a YAML text file"):
        load_recipe(path)


def test_a_cuda_device_that_is_not_there(tmp_path, capsys):
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    device = f"cuda:{n}" if n else "cuda"
    assert main(["recipes/quickstart.yaml", f"train.out={tmp_path}", f"train.device={device}",
                 "model.name=mlit_micro", "train.progress=false"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"mlit.train: train.device={device}: ")
