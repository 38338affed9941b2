"""Your own images (data.dataset: folder): PNG and JPEG, grey, palette and RGBA images of odd
sizes in torchvision's ImageFolder layout train through the code a user runs, their classes
travel with the checkpoint and the export, and a bad layout or damaged files are one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mlit import eval as eval_cli
from mlit import export as export_cli
from mlit.data import folder, images
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
    assert "folder val/ split, 12 images" in out  # a folder dataset tests on val/
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


def one_error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("mlit.train: ") and "Traceback" not in "\n".join(lines), lines
    return lines[-1]


@pytest.mark.parametrize("change, words", [
    (lambda r: [(r / s / "emu").rename(r / s / "zebra") for s in ("train", "val")],
     "new: zebra; gone: emu"),
    (lambda r: write_images(r / "train" / "fox", 3, 0, 5), "new: fox"),
])
def test_a_resumed_run_never_trains_on_another_class_mapping(tmp_path, capsys, change, words):
    root = image_folder(tmp_path / "images")
    assert train(root, tmp_path / "run", "train.stop_after_epochs=1") == 0  # pretrain 1 of 1
    change(root)
    folder.scan.cache_clear()
    assert train(root, tmp_path / "run") == 2
    line = one_error(capsys)
    assert line.startswith(f"mlit.train: {root}/train: its class folders changed since this "
                           f"run's checkpoints ({words}; ")
    assert line.endswith("restore them, or start over with train.resume=false or another "
                         "train.out")
    assert train(root, tmp_path / "run", "train.resume=false") == 0  # starting over is fine


@pytest.mark.parametrize("edit, words", [
    (lambda s: s.pop("train_images"), "train_images: Field required"),
    (lambda s: s.update(std=[0, 0, 0]), "std: must be positive"),
    (lambda s: s.update(std="x"), "std: "),
    (lambda s: s.update(mean=[1.5, 0.2, 0.2]), "mean.0: Input should be less than or equal to 1"),
])
def test_a_damaged_data_stats_file_is_one_line(tmp_path, capsys, edit, words):
    root = image_folder(tmp_path / "images")
    run = tmp_path / "run"
    assert train(root, run, "train.stop_after_epochs=1") == 0
    stats = json.loads((run / "data_stats.json").read_text())
    edit(stats)
    (run / "data_stats.json").write_text(json.dumps(stats))
    assert train(root, run) == 2
    line = one_error(capsys)
    assert line.startswith(f"mlit.train: {run / 'data_stats.json'}: {words}"), line
    assert line.endswith("delete it to compute the statistics again")


def test_one_class_and_loose_validation_images_are_refused(tmp_path, capsys):
    root = image_folder(tmp_path / "images")
    for name in ("dog", "emu"):
        __import__("shutil").rmtree(root / "train" / name)
        __import__("shutil").rmtree(root / "val" / name)
    assert train(root, tmp_path / "run") == 2
    assert one_error(capsys) == (f"mlit.train: {root}/train: one class folder (cat); the "
                                 "finetune stage needs at least two classes (a one-class "
                                 "classifier is always right)")
    root = image_folder(tmp_path / "loose")
    for image in (root / "val").rglob("*.*"):
        image.rename(root / "val" / f"{image.parent.name}_{image.name}")
    for name in CLASSES:
        (root / "val" / name).rmdir()
    assert train(root, tmp_path / "run2") == 2
    assert one_error(capsys) == (f"mlit.train: {root}/val: its images lie directly in val/; a "
                                 "labeled dataset needs val/<class>/<image>, as train/ has")


def test_hidden_folders_and_loose_training_images_are_not_classes(tmp_path, capsys):
    root = image_folder(tmp_path / "images")
    write_images(root / "train" / ".ipynb_checkpoints", 2, 0, 7)
    write_images(root / "train", 2, 1, 8, prefix="loose")
    (root / "train" / "cat" / "._000.png").write_bytes(b"AppleDouble")  # macOS metadata
    layout = folder.scan(str(root))
    assert layout.classes == tuple(CLASSES) and len(layout.train) == 36
    assert (f"warning: {root}/train: 2 images lie directly in train/ beside its class folders "
            "(e.g. loose000.png) and are not used") in capsys.readouterr().err


def test_16_bit_exif_and_any_decoding_failure(tmp_path, capsys):
    sixteen = tmp_path / "deep.png"
    Image.fromarray(np.full((8, 8), 65535 // 2, dtype=np.uint16)).save(sixteen)
    assert Image.open(sixteen).mode.startswith("I")
    assert np.asarray(images.open_rgb(sixteen)).max() == 127  # scaled, not clipped to 255
    rotated = tmp_path / "phone.jpg"
    image = Image.new("RGB", (20, 10), (200, 0, 0))
    exif = image.getexif()
    exif[0x0112] = 6  # EXIF orientation: rotate 90 degrees to be upright
    image.save(rotated, exif=exif)
    assert images.open_rgb(rotated).size == (10, 20)
    root = image_folder(tmp_path / "images")
    tiff = root / "train" / "cat" / "broken.tiff"
    tiff.write_bytes(b"II*\x00" + b"\x08\x00\x00\x00" + b"\x01\x00" + bytes(10) + b"\xff" * 40)
    folder.scan.cache_clear()
    dataset = folder.FolderImages(str(root), train=True)
    index = [p for p, _ in dataset.samples].index(tiff)
    assert dataset[index][0].size  # another image stands in
    assert dataset.bad[index] == 1
    folder.FolderImages(str(root), train=True)[index]  # a second dataset of the split
    warned = [l for l in capsys.readouterr().err.splitlines() if "broken.tiff" in l]
    assert len(warned) == 1  # warned once per process, not once per dataset


def test_pixel_scale_or_non_numeric_normalisation_is_refused(tmp_path, capsys):
    root = image_folder(tmp_path / "images")
    for extra, words in ((["data.mean=[123.7,116.3,103.5]", "data.std=[58.4,57.1,57.4]"],
                          "on the 0-255 pixel scale; mlit normalises pixels scaled to [0, 1], "
                          "so divide by 255: [0.485, 0.456, 0.406]"),
                         (["data.mean=[true,false,true]", "data.std=[0.2,0.2,0.2]"],
                          "data.mean.0: Input should be a valid number (got True)")):
        assert train(root, tmp_path / "run", *extra) == 2
        assert words in one_error(capsys)


def test_library_noise_becomes_our_lines_or_nothing(tmp_path, capfd, monkeypatch):
    """libtiff's note on a damaged LZW strip (written to the file descriptor, past Python)
    and PIL's decompression-bomb warning do not reach the output as they are."""
    rng = np.random.default_rng(0)
    lzw = tmp_path / "damaged.tiff"
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
        lzw, compression="tiff_lzw")
    data = bytearray(lzw.read_bytes())
    for i in range(200, 1200, 7):
        data[i] ^= 0x5A
    lzw.write_bytes(bytes(data))
    with pytest.raises(OSError):
        images.open_rgb(lzw)
    big = tmp_path / "big.png"
    Image.new("RGB", (12, 12)).save(big)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 144 pixels: over it, not twice
    assert images.open_rgb(big).size == (12, 12)
    out, err = capfd.readouterr()
    assert "Using code not yet in table" not in out + err
    assert err.strip().splitlines() == [f"warning: {big}: over PIL's decompression-bomb limit "
                                        "of 100 pixels; decoded anyway"]


@pytest.mark.slow
def test_under_torchrun_the_rank_whose_images_fail_says_so_and_no_other(tmp_path):
    """Rank 1's shard of the evaluation split holds the undecodable files: rank 1 names them
    and announces its stop; rank 0, whose collective then fails, stops silently instead of
    advising a resume that cannot help."""
    root = image_folder(tmp_path / "images", n_val=8)  # 24 good images: rank 0's shard
    for i in range(12):  # sorted last: in rank 1's half of the 36
        (root / "val" / "emu" / f"zz_bad{i:02d}.jpg").write_bytes(b"\xff\xd8\xff\x00")
    env = {**{k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"},
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", "-m", "mlit.train", "recipes/quickstart.yaml",
                           *FAST, f"data.root={root}", f"train.out={tmp_path / 'run'}",
                           "pretrain.eval_every=1", "train.threads=1"],
                          cwd=Path(__file__).parents[1], env=env, capture_output=True,
                          text=True, timeout=300)
    ours = [line for line in done.stderr.splitlines()
            if line.startswith(("mlit.train:", "mlit.train ["))]
    assert ours == [f"mlit.train [rank 1 of 2]: {root}: 12 images of the evaluation split "
                    "cannot be decoded (more than 10); the warnings above name them: replace "
                    "or remove them"], done.stderr[-3000:]
