"""mLiT through timm as a timm user meets it (docs/timm.md): registration that costs nothing
until timm is imported, a model file's own data config, timm's pooling, feature and
intermediate interfaces, and one clear exception for each wrong input."""

import subprocess
import sys

import pytest
import torch

import mlit
from mlit import export as export_cli

timm = pytest.importorskip("timm")


def test_import_mlit_imports_neither_timm_nor_torchvision_and_timm_still_sees_mlit():
    code = ("import sys, mlit; heavy = [m for m in ('timm', 'torchvision', 'PIL', 'safetensors',"
            " 'pydantic', 'yaml') if m in sys.modules]; assert not heavy, heavy; "
            "import timm; print(sorted(timm.list_models('*mlit_*')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[0] == str(sorted(
        [*mlit.CONFIGS, *(f"m{name}" for name in mlit.CONFIGS)]))


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """A trained mlit_micro's export: 10 named classes, its own normalisation."""
    folder = tmp_path_factory.mktemp("timm")
    torch.manual_seed(0)
    model = mlit.create_model("mlit_micro", num_classes=10)
    model.encoder.norm.weight.data.uniform_(0.5, 1.5)
    torch.save({"model": model.state_dict(), "kind": "finetune", "model_name": "mlit_micro",
                "model_config": vars(model.cfg), "epoch": 1,
                "normalization": {"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]},
                "class_names": [f"digit {i}" for i in range(10)]}, folder / "run.pt")
    assert export_cli.main([str(folder / "run.pt"), str(folder / "model.safetensors")]) == 0
    (folder / "model.onnx").write_bytes(b"\x08\x07")
    return folder


def from_file(name, file, **kwargs):
    return timm.create_model(name, pretrained=True,
                             pretrained_cfg_overlay=dict(file=str(file)), **kwargs)


def test_a_files_model_has_its_weights_classes_and_data_config(export):
    file = export / "model.safetensors"
    model = from_file("mlit_micro", file).eval()
    x = torch.randn(2, 3, 12, 12)
    assert torch.equal(model(x), mlit.load(file)(x)[0])  # 10 classes: the file's head
    config = timm.data.resolve_data_config({}, model=model)
    assert config["mean"] == (0.1, 0.2, 0.3) and config["std"] == (0.4, 0.5, 0.6)
    assert config["input_size"] == (3, 12, 12)
    assert model.pretrained_cfg["label_names"][9] == "digit 9"
    other = from_file("mlit_micro", file, num_classes=4)  # a new head, the file's encoder
    assert other.head.weight.shape == (4, 16)
    assert torch.equal(other.encoder.norm.weight, model.encoder.norm.weight)
    backbone = from_file("mmlit_micro", file).eval()
    assert torch.equal(backbone(x), model.forward_head(model.forward_features(x), True))


@pytest.mark.parametrize("case, error, words", [
    ("missing", "CheckpointError", "nope.safetensors does not exist"),
    ("folder", "CheckpointError", "is a folder, not a model file"),
    ("onnx", "CheckpointError", "is an ONNX export, for ONNX Runtime"),
    ("another model", "ValueError", "holds mlit_micro (embed_dim=16, depth=3), not mlit_tiny "
                                    "(embed_dim=64, depth=3)"),
    ("channels", "ValueError", "takes images (B, 1, 12, 12) (in_channels=1, image_size=12); "
                               "got (2, 3, 12, 12)"),
    ("image size", "ValueError", "takes images (B, 3, 36, 36) (in_channels=3, image_size=36); "
                                 "got (2, 3, 32, 32)"),
    ("integer pixels", "ValueError", "takes floating-point images (pixels scaled to [0, 1], "
                                     "then normalised with the run's mean and std); got "
                                     "torch.uint8"),
    ("feature width", "ValueError", "forward_head takes the tokens of forward_features (B, N, "
                                    "16); got (2, 145, 7)"),
    ("negative classes", "ValueError", "num_classes=-1: must be 0 (no head) or a positive"),
    ("negative reset", "ValueError", "num_classes=-3: must be 0 (no head) or a positive"),
    ("pool", "ValueError", "global_pool='max': mLiT pools 'token'"),
    ("unknown keyword", "TypeError", "mlit_micro() got an unexpected keyword argument 'depht'"),
])
def test_each_wrong_input_is_one_clear_exception(export, case, error, words):
    act = {
        "missing": lambda: from_file("mlit_micro", export / "nope.safetensors"),
        "folder": lambda: from_file("mlit_micro", export),
        "onnx": lambda: from_file("mlit_micro", export / "model.onnx"),
        "another model": lambda: from_file("mlit_tiny", export / "model.safetensors"),
        "channels": lambda: timm.create_model("mlit_micro", in_chans=1)(
            torch.randn(2, 3, 12, 12)),
        "image size": lambda: timm.create_model("mlit_xxs")(torch.randn(2, 3, 32, 32)),
        "integer pixels": lambda: timm.create_model("mlit_micro")(
            torch.zeros(2, 3, 12, 12, dtype=torch.uint8)),
        "feature width": lambda: timm.create_model("mlit_micro").forward_head(
            torch.randn(2, 145, 7)),
        "negative classes": lambda: timm.create_model("mlit_micro", num_classes=-1),
        "negative reset": lambda: timm.create_model("mlit_micro").reset_classifier(-3),
        "pool": lambda: timm.create_model("mlit_micro", global_pool="max"),
        "unknown keyword": lambda: timm.create_model("mlit_micro", depht=4),
    }[case]
    with pytest.raises(Exception) as caught:
        act()
    assert type(caught.value).__name__ == error
    assert words in str(caught.value) and "\n" not in str(caught.value)


def test_pooling_follows_global_pool_at_creation_and_reset():
    torch.manual_seed(0)
    model = timm.create_model("mlit_micro").eval()
    x = torch.randn(2, 3, 12, 12)
    tokens = model.forward_features(x)
    assert tokens.shape == (2, 17, 16)  # 16 patches, then the dummy patch
    assert torch.equal(model.forward_head(tokens, pre_logits=True), tokens[:, -1])
    model.reset_classifier(5, "avg")
    assert torch.allclose(model.forward_head(tokens, pre_logits=True), tokens[:, :-1].mean(1))
    assert model(x).shape == (2, 5)
    model.reset_classifier(0)  # keeps 'avg'
    assert torch.allclose(model(x), tokens[:, :-1].mean(1))
    model.reset_classifier(0, "")
    assert torch.equal(model(x), tokens)
    created = timm.create_model("mlit_micro", global_pool="avg", num_classes=0).eval()
    created.load_state_dict(model.state_dict())
    assert torch.allclose(created(x), tokens[:, :-1].mean(1))


def test_features_only_and_forward_intermediates_give_the_patch_grid():
    torch.manual_seed(0)
    model = timm.create_model("mlit_xxs").eval()
    x = torch.randn(2, 3, 36, 36)
    final, taps = model.forward_intermediates(x)
    assert torch.equal(final, model.forward_features(x)) and len(taps) == 9
    tokens = model.encoder.layers[0](model.encoder.patch_embed(x))[0]
    assert torch.equal(taps[0], tokens[:, :-1].reshape(2, 12, 12, 108).permute(0, 3, 1, 2))
    features = timm.create_model("mlit_xxs", features_only=True)
    assert features.feature_info.channels() == [108] * 3
    assert features.feature_info.reduction() == [3] * 3
    features.model.load_state_dict({k: v for k, v in model.state_dict().items()  # pruned:
                                    if not k.startswith(("head.", "encoder.norm."))})  # no norm
    maps = features.eval()(x)
    assert [m.shape for m in maps] == [(2, 108, 12, 12)] * 3
    assert torch.equal(maps[-1], taps[-1])


def test_device_and_dtype_reach_every_weight_and_a_new_head():
    model = timm.create_model("mlit_micro", device="meta", dtype=torch.float64)
    assert {(t.device.type, t.dtype) for t in model.state_dict().values()
            if t.is_floating_point()} == {("meta", torch.float64)}
    assert model.in_chans == 3 and model.num_features == model.head_hidden_size == 16
    model.reset_classifier(7)
    assert (model.head.weight.device.type, model.head.weight.dtype) == ("meta", torch.float64)
