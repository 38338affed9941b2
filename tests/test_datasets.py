"""Datasets checked when they load, before any work: a damaged CIFAR, SVHN or Flowers102
file is one line naming it, and a download without a network says where to put the files."""

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mlit.train import main

from helpers import TINY, one_line, write_cifar100

ROOT = Path(__file__).parents[1]


def damage(folder: Path, how: str) -> str:
    """Spoil cifar-100-python/train as `how` says; returns the words the error must use."""
    path = folder / "cifar-100-python" / "train"
    batch = pickle.loads(path.read_bytes(), encoding="latin1")
    if how == "truncated":
        path.write_bytes(path.read_bytes()[:500])
        return "not a readable pickle"
    if how == "empty":
        path.write_bytes(b"")
        return "empty file"
    if how == "random":
        path.write_bytes(np.random.default_rng(0).bytes(4000))
        return "not a readable pickle"
    if how == "label_range":
        batch["fine_labels"][3] = 140
    elif how == "few_labels":
        batch["fine_labels"] = batch["fine_labels"][:-2]
    elif how == "float_pixels":
        batch["data"] = batch["data"].astype(np.float64)
    elif how == "wrong_size":
        batch["data"] = batch["data"][:, :3000]
    elif how == "small_images":  # 16x16 images in a 32x32 folder, as many rows as labels
        batch["data"] = batch["data"][:, :768].copy()
    path.write_bytes(pickle.dumps(batch, protocol=2))
    return {"label_range": "labels must be integers in 0..99 (found ",
            "few_labels": "62 labels for 64 images", "float_pixels": "pixels are float64",
            "wrong_size": "'data' is (64, 3000), expected rows of 3072 values",
            "small_images": "'data' is (64, 768), expected rows of 3072 values"}[how]


@pytest.mark.parametrize("how", ["truncated", "empty", "random", "label_range", "few_labels",
                                 "float_pixels", "wrong_size", "small_images"])
def test_a_damaged_cifar_file_is_one_line_naming_it(tmp_path, capsys, how):
    write_cifar100(tmp_path / "data")
    words = damage(tmp_path / "data", how)
    out = tmp_path / "out"
    code = main(["recipes/scratch_cifar100.yaml", f"data.root={tmp_path / 'data'}",
                 f"train.out={out}", "data.pipeline=torchvision", *TINY])
    line = one_line(capsys)
    assert code == 2
    assert line.startswith(f"mlit.train: {tmp_path / 'data' / 'cifar-100-python' / 'train'}: ")
    assert words in line
    assert not list(out.glob("*/checkpoint.pt"))  # before any work


def test_a_download_without_network_says_where_to_put_the_files(tmp_path):
    env = {**os.environ, "https_proxy": "http://127.0.0.1:9", "http_proxy":
           "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "no_proxy": ""}
    done = subprocess.run([sys.executable, "-m", "mlit.train", "recipes/scratch_cifar10.yaml",
                           f"data.root={tmp_path}/data", "data.download=true",
                           f"train.out={tmp_path}/out", *TINY], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    lines = [l for l in done.stderr.splitlines() if l.startswith("mlit.train")]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith("mlit.train: downloading cifar10 from "
                               "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz failed (")
    assert lines[0].endswith(f"without a network, put cifar-10-batches-py/ under "
                             f"{tmp_path}/data by hand")


def test_damaged_svhn_and_flowers_files_are_named(tmp_path):
    """The .mat datasets: a file that does not load, and labels out of range."""
    import scipy.io

    from mlit.data.catalogue import build_dataset
    from mlit.data.errors import DatasetInvalid

    rng = np.random.default_rng(0)
    path = tmp_path / "train_32x32.mat"
    labels = rng.integers(1, 11, size=(20, 1))
    labels[4] = 12  # SVHN's labels are 1..10 (10 is the digit 0)
    scipy.io.savemat(path, {"X": rng.integers(0, 256, (32, 32, 3, 20), dtype=np.uint8),
                            "y": labels})
    with pytest.raises(DatasetInvalid, match=rf"^{path}: labels must be integers in 0\.\.9"):
        build_dataset("svhn", str(tmp_path), True, None)
    path.write_bytes(rng.bytes(500))
    with pytest.raises(DatasetInvalid, match=f"^{path}: not a readable SVHN .mat file"):
        build_dataset("svhn", str(tmp_path), True, None)
    folder = tmp_path / "flowers-102"
    (folder / "jpg").mkdir(parents=True)
    for name in ("imagelabels.mat", "setid.mat"):
        (folder / name).write_bytes(rng.bytes(300))
    with pytest.raises(DatasetInvalid, match=f"^{folder}: the label files"):
        build_dataset("flowers102", str(tmp_path), True, None)


def test_the_digits_split_is_scikit_learns_and_is_cached_and_checked(tmp_path, monkeypatch):
    """The first load writes scikit-learn's split to the user's cache; later loads read it
    (without importing scikit-learn); a damaged or altered cache is made again; a cache
    that cannot be written is skipped."""
    from mlit.data import digits

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = digits.cache_file()
    assert path.parent == tmp_path / "cache" / "mlit" and not path.exists()
    truth = digits.split_from_sklearn()
    assert {k: v.shape for k, v in truth.items()} == digits.SPLIT
    per_class = np.bincount(truth["y_train"]) + np.bincount(truth["y_test"])
    assert np.abs(np.bincount(truth["y_test"]) - 360 * per_class / 1797).max() < 1  # stratified

    def same(split):
        return all(np.array_equal(split[k], truth[k]) and split[k].dtype == truth[k].dtype
                   for k in truth)

    assert same(digits.digits_split()) and same(digits.read_cached(path))
    train = digits.Digits(train=True)
    image, label = train[0]
    assert (len(train), image.size, image.mode, label) == (1437, (8, 8), "RGB",
                                                           int(truth["y_train"][0]))

    done = subprocess.run([sys.executable, "-c", "import sys; from mlit.data import digits; "
                           "digits.digits_split(); print('sklearn' in sys.modules)"],
                          env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")},
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False", done.stderr  # read from the cache

    whole = path.read_bytes()
    for damage in (whole[: len(whole) // 2],  # cut short
                   whole.replace(truth["x_test"].tobytes()[:64], bytes(64))):  # CRC fails
        path.write_bytes(damage)
        assert digits.read_cached(path) is None
        assert same(digits.digits_split()) and same(digits.read_cached(path))  # made again
    altered = {**truth, "y_test": truth["y_test"] + 10}  # labels out of range
    np.savez(path, **altered)
    assert digits.read_cached(path) is None and same(digits.digits_split())

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "a_file"))
    (tmp_path / "a_file").write_text("not a folder")
    assert same(digits.digits_split()) and not digits.cache_file().exists()
