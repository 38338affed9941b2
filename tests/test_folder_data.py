"""Your own images (data.dataset: folder): PNG and JPEG, grey, palette and RGBA images of odd
sizes in torchvision's ImageFolder layout train through the code a user runs, their classes
travel with the checkpoint and the export, and a bad layout or damaged files are one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mlit import eval as eval_cli
from mlit import export as export_cli
from mlit.data import folder
from mlit.data.folder import MAX_UNREADABLE
from mlit.files.modelfile import read
from mlit.train import main

CLASSES = ["cat", "dog", "emu"]
FAST = ["model.name=mlit_micro", "train.progress=false", "data.dataset=folder",
        "pretrain.epochs=1", "finetune.epochs=1", "pretrain.warmup_epochs=0",
        "finetune.warmup_epochs=0", "pretrain.batch_size=16", "finetune.batch_size=16"]


def write_images(folder: Path, n: int, colour: int, seed: int, prefix: str = "") -> None:
    """n images of odd sizes, a different mode and format each (grey, palette, RGBA, RGB)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        h, w = (int(v) for v in rng.integers(9, 41, 2))
        pixels = rng.integers(0, 60, (h, w, 3))
        pixels[..., colour] += 180
        image = Image.fromarray(pixels.astype(np.uint8))
        mode, ext = [("L", "png"), ("P", "png"), ("RGBA", "png"), ("RGB", "jpg")][i % 4]
        image.convert(mode).save(folder / f"{prefix}{i:03d}.{ext}")


def image_folder(root: Path, labeled: bool = True, n_train=12, n_val=4) -> Path:
    for split, n in (("train", n_train), ("val", n_val)):
        for c, name in enumerate(CLASSES):
            if labeled:
                write_images(root / split / name, n, c, seed=c)
            else:
                write_images(root / split, n, c, seed=c, prefix=name)
    return root


def train(root: Path, out: Path, *extra) -> int:
    return main(["recipes/quickstart.yaml", *FAST, f"data.root={root}", f"train.out={out}",
                 *extra])


def test_a_folder_of_mixed_images_trains_and_its_classes_travel(tmp_path, capsys):
    root = image_folder(tmp_path / "images")
    assert train(root, tmp_path / "run") == 0
    err = capsys.readouterr().err
    assert (f"data: {root}: 36 training images, 3 classes; normalisation computed from 36 "
            "training images") in err
    stats = json.loads((tmp_path / "run" / "data_stats.json").read_text())
    assert stats["classes"] == CLASSES and len(stats["mean"]) == 3
    # a third of each channel's images is bright in it: means near (180/3 + 30) / 255
    assert all(0.25 < m < 0.5 for m in stats["mean"]) and all(s > 0.2 for s in stats["std"])
    ckpt = tmp_path / "run" / "finetune" / "checkpoint.pt"
    mf = read(ckpt)
    assert mf.class_names == CLASSES and mf.normalization["mean"] == stats["mean"]
    assert mf.config.num_classes == 3
    assert export_cli.main([str(ckpt), str(tmp_path / "m.safetensors")]) == 0
    assert read(tmp_path / "m.safetensors").class_names == CLASSES
    capsys.readouterr()
    assert eval_cli.main([str(tmp_path / "m.safetensors"), "--out", str(tmp_path / "e")]) == 0
    out = capsys.readouterr().out
    assert "folder test split, 12 images" in out
    assert any(f": {name})" in out for name in CLASSES), out  # per-class lines name classes
    result = json.loads((tmp_path / "e" / "eval.json").read_text())
    assert result["classes"] == CLASSES


def test_the_device_pipeline_keeps_a_folder_at_its_stored_size(tmp_path, capsys):
    root = image_folder(tmp_path / "images")
    assert train(root, tmp_path / "run", "data.pipeline=device", "data.stored_size=20",
                 "data.mean=[0.5,0.5,0.5]", "data.std=[0.25,0.25,0.25]") == 0
    assert "normalisation data.mean and data.std" in capsys.readouterr().err
    import torch

    from mlit.data.loaders import device_split

    images, labels = device_split("folder", str(root), True, 12, False, torch.device("cpu"), 20)
    assert images.shape == (36, 3, 20, 20) and images.dtype == torch.uint8
    assert labels.tolist() == [0] * 12 + [1] * 12 + [2] * 12


def test_unlabeled_images_serve_mae_pretraining_only(tmp_path, capsys):
    root = image_folder(tmp_path / "images", labeled=False)
    assert train(root, tmp_path / "both") == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line == (f"mlit.train: {root}/train: images without class folders serve MAE or "
                    "SimCLR pre-training only; the finetune stage needs train/<class>/<image>")
    assert not (tmp_path / "both" / "pretrain").exists()  # before any work
    recipe = tmp_path / "mae.yaml"
    recipe.write_text("model: {name: mlit_micro}\ndata: {dataset: folder, num_workers: 0}\n"
                      "pretrain: {epochs: 1, batch_size: 16, base_lr: 1.0e-3, "
                      "warmup_epochs: 0}\ntrain: {progress: false}\n")
    assert main([str(recipe), f"data.root={root}", f"train.out={tmp_path / 'mae'}"]) == 0
    assert (tmp_path / "mae" / "pretrain" / "checkpoint.pt").exists()


@pytest.mark.parametrize("damage, words", [
    (lambda r: __import__("shutil").rmtree(r / "train"), "{r}/train: no such folder"),
    (lambda r: (r / "train" / "fox").mkdir(), "{r}/train/fox: an empty class folder"),
    (lambda r: write_images(r / "val" / "gnu", 2, 0, 0), "{r}/val/gnu: a class that"),
    (lambda r: __import__("shutil").rmtree(r / "val"), "{r}/val: no such folder (nor test/)"),
    (lambda r: [p.unlink() for p in (r / "val").rglob("*.*")], "{r}/val/cat: an empty class"),
])
def test_a_bad_layout_is_one_line_before_any_work(tmp_path, capsys, damage, words):
    root = image_folder(tmp_path / "images")
    damage(root)
    assert train(root, tmp_path / "run") == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mlit.train: "), lines
    assert words.format(r=root) in lines[0]
    assert not (tmp_path / "run" / "pretrain" / "checkpoint.pt").exists()


def test_a_file_that_cannot_be_decoded_is_named_skipped_and_counted(tmp_path, capsys):
    root = image_folder(tmp_path / "images")
    truncated = root / "train" / "cat" / "000.png"
    truncated.write_bytes(truncated.read_bytes()[:40])
    (root / "train" / "dog" / "notes.jpg").write_text("not an image")
    assert train(root, tmp_path / "run") == 0
    warnings = [line for line in capsys.readouterr().err.splitlines()
                if line.startswith("warning: skipped")]
    assert {line.split()[2].rstrip(":") for line in warnings} == {str(truncated),
                                                     str(root / "train/dog/notes.jpg")}
    for line in warnings:
        assert "cannot be decoded" in line and line.endswith("another image stands in for it")
    for i in range(MAX_UNREADABLE):  # past the limit: the run stops, naming the count
        (root / "train" / "emu" / f"bad{i}.jpg").write_bytes(b"\xff\xd8\xff\x00")
    folder.scan.cache_clear()  # a process reads a folder's listing once
    assert train(root, tmp_path / "run2") == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    count = int(line.removeprefix(f"mlit.train: {root}: ").split()[0])  # as far as it read
    assert MAX_UNREADABLE < count <= MAX_UNREADABLE + 2
    assert line.endswith(f" images of the training split cannot be decoded (more than "
                         f"{MAX_UNREADABLE}); the warnings above name them: replace or remove "
                         "them")
