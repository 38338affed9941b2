"""What a user does with a trained model: evaluate it, export it, load it, plot its curves;
and what they get when the file is not a model of this project."""

import json
import struct
from pathlib import Path

import pytest
import torch

import mlit
from mlit import eval as mlit_eval
from mlit import export as mlit_export
from mlit import plot as mlit_plot
from mlit.files.checkpoint import CheckpointError
from mlit.train import main as train

from helpers import THREADS

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    """The quickstart recipe, two epochs of each stage."""
    out = tmp_path_factory.mktemp("quickstart")
    assert train([str(ROOT / "recipes/quickstart.yaml"), f"train.out={out}",
                  "pretrain.epochs=2", "finetune.epochs=2", "train.progress=false",
                  f"train.threads={THREADS}"]) == 0
    return out


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR; asserts the signature."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000, path
    return struct.unpack(">II", data[16:24])


@pytest.mark.slow
def test_eval_reproduces_the_runs_accuracy_and_draws_its_figures(quickstart, capsys):
    summary = json.loads((quickstart / "summary.json").read_text())
    checkpoint = quickstart / "finetune" / "checkpoint.pt"
    assert mlit_eval.main([str(checkpoint), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["top1"] == summary["test_acc"]  # exactly: the runner's own evaluation
    assert result["loss"] == pytest.approx(summary["test_loss"], rel=1e-12)
    assert result["top1"] <= result["top5"] <= 1 and result["images"] == 360
    assert len(result["per_class_acc"]) == 10
    shares = result["expert_share"]
    assert [len(s) for s in shares] == [3, 4, 5]  # mlit_tiny: expert stages 3 -> 4 -> 5
    assert all(sum(s) == pytest.approx(1.0) for s in shares)
    out = checkpoint.parent / "eval_digits"
    for name in ("confusion.png", "experts.png"):
        width, height = png_size(out / name)
        assert width > 300 and height > 300
    saved = json.loads((out / "eval.json").read_text())
    assert len(saved["confusion"]) == 10 and sum(map(sum, saved["confusion"])) == 360
    assert len(saved["expert_share_per_class"][2]) == 10
    # the human form: the same top-1 and one line per MoE layer
    assert mlit_eval.main([str(checkpoint)]) == 0
    text = capsys.readouterr().out
    assert f"top-1 {summary['test_acc']:.4f}" in text and text.count("MoE layer") == 3


def test_eval_of_a_pretraining_checkpoint_reports_its_losses(quickstart, capsys):
    assert mlit_eval.main([str(quickstart / "pretrain" / "checkpoint.pt"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    logged = [json.loads(l) for l in (quickstart / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in logged if r["stage"] == "pretrain"][-1]
    assert result["top1"] is None
    assert result["loss"] == pytest.approx(last["test_loss"], rel=1e-12)
    assert len(result["expert_share"]) == 3 + 1  # encoder layers, then the decoder's


def test_export_and_load_give_identical_logits(quickstart, tmp_path, capsys):
    checkpoint = quickstart / "finetune" / "checkpoint.pt"
    exported = tmp_path / "model.safetensors"
    assert mlit_export.main([str(checkpoint), str(exported)]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {exported}: mlit_tiny (finetune), ")
    images = torch.randn(6, 3, 12, 12)
    from_pt, from_st = mlit.load(checkpoint), mlit.load(exported)
    assert isinstance(from_st, mlit.MLiT) and not from_st.training
    assert torch.equal(from_pt(images)[0], from_st(images)[0])
    from safetensors import safe_open

    with safe_open(str(exported), framework="pt") as f:
        meta = f.metadata()
    assert meta["kind"] == "finetune" and json.loads(meta["model_config"])["embed_dim"] == 64
    assert json.loads(meta["recipe"])["data"]["dataset"] == "digits"
    # the export evaluates alone (its recipe travels in the metadata) to the same accuracy
    assert mlit_eval.main([str(exported), "--json", f"--out={tmp_path / 'ev'}"]) == 0
    summary = json.loads((quickstart / "summary.json").read_text())
    assert json.loads(capsys.readouterr().out)["top1"] == summary["test_acc"]


@pytest.mark.slow
def test_an_encoder_only_export_starts_a_finetune(quickstart, tmp_path, capsys):
    encoder = tmp_path / "encoder.safetensors"
    assert mlit_export.main([str(quickstart / "pretrain" / "checkpoint.pt"), str(encoder),
                             "--encoder-only"]) == 0
    module = mlit.load(encoder)
    assert isinstance(module, mlit.MLiTEncoder)
    tokens, _ = module(torch.randn(2, 3, 12, 12))
    assert tokens.shape == (2, 17, 64)
    mae = mlit.load(quickstart / "pretrain" / "checkpoint.pt")
    assert all(torch.equal(v, mae.encoder.state_dict()[k])
               for k, v in module.state_dict().items())
    assert train([str(ROOT / "recipes/transfer_cifar10.yaml"), "data.dataset=digits",
                  "data.num_workers=0", "model.name=mlit_tiny", f"finetune.init={encoder}",
                  "finetune.epochs=2", "finetune.warmup_epochs=1", "finetune.batch_size=64",
                  f"train.out={tmp_path / 'ft'}", "train.progress=false"]) == 0
    first = torch.load(tmp_path / "ft" / "finetune" / "checkpoint.pt", weights_only=True)
    assert first["epoch"] == 2


def test_plot_draws_every_curve(quickstart, tmp_path, capsys):
    assert mlit_plot.main([str(quickstart), str(quickstart), "--out", str(tmp_path)]) == 0
    written = capsys.readouterr().out
    for name in ("pretraining_loss.png", "accuracy.png", "loss.png", "lr.png"):
        assert str(tmp_path / name) in written
        width, height = png_size(tmp_path / name)
        assert width > 500 and height > 300
    assert mlit_plot.main([str(tmp_path / "nothing")]) == 2
    assert "no metrics.jsonl or result.json" in capsys.readouterr().err


def foreign_files(tmp_path: Path, quickstart: Path) -> dict[str, str]:
    """Files that are not models of this project, and the words their error must use."""
    good = (quickstart / "finetune" / "checkpoint.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(good[: len(good) // 3])
    (tmp_path / "random.safetensors").write_bytes(b"\x13" * 64)
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    return {"missing.pt": "does not exist", "truncated.pt": "is not a readable checkpoint",
            "random.safetensors": "is not a readable safetensors file",
            "foreign.pt": "is not an mLiT checkpoint",
            "foreign.safetensors": "is not an mLiT export"}


def test_missing_truncated_and_foreign_files_are_one_line(quickstart, tmp_path, capsys):
    for name, words in foreign_files(tmp_path, quickstart).items():
        path = tmp_path / name
        with pytest.raises(CheckpointError, match=words) as err:
            mlit.load(path)
        assert "\n" not in str(err.value) and str(path) in str(err.value)
        for command in (lambda: mlit_eval.main([str(path)]),
                        lambda: mlit_export.main([str(path), str(tmp_path / "o.safetensors")])):
            assert command() == 2
            line = capsys.readouterr().err
            assert line.count("\n") == 1 and words in line and str(path) in line, line


def test_class_names_the_font_lacks_draw_without_warnings(tmp_path, recwarn):
    import warnings

    from mlit.inference.figures import plot_confusion, plot_experts

    warnings.simplefilter("always")
    names = ["猫", "🐶", "bird"]
    plot_confusion(tmp_path / "confusion.png", [[2, 0, 0], [0, 1, 1], [0, 0, 3]], names, "m")
    plot_experts(tmp_path / "experts.png", [[[0.5, 0.5], [0.2, 0.8], [1.0, 0.0]]], names, "m")
    assert (tmp_path / "confusion.png").stat().st_size and (tmp_path / "experts.png").exists()
    assert not [w for w in recwarn if "missing from" in str(w.message)]
