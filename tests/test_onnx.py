"""ONNX export for CPUs and edge runtimes: a quickstart checkpoint exports through its own
checks, ONNX Runtime matches PyTorch at batch 1, 7 and 64, the int8 file loads and its
accuracy is reported, mlit.eval on the ONNX file gives the checkpoint's top-1, and a damaged
or foreign .onnx is one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import onnx  # noqa: E402
import torch  # noqa: E402

from mlit import eval as eval_cli  # noqa: E402
from mlit import export as export_cli  # noqa: E402
from mlit.files import modelfile  # noqa: E402
from mlit.inference.onnx_export import BATCHES, Deployable, module_to_export  # noqa: E402
from mlit.inference.onnx_runtime import read_onnx, session
from mlit.train import main as train  # noqa: E402

from helpers import tool_main  # noqa: E402

ROOT = Path(__file__).parents[1]


def every_node(graph):
    """The nodes of a graph and of every subgraph in it (the chunked export's Scan and If)."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from every_node(attr.g)


def in_one_pass(graph):
    """The nodes of the chunked export's part for the rest of the batch: the model once."""
    rest = next(n for n in graph.node if n.name == "rest.if")
    return list(next(a.g for a in rest.attribute if a.name == "then_branch").node)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx")
    assert train(["recipes/quickstart.yaml", "model.name=mlit_micro", "pretrain.epochs=2",
                  "finetune.epochs=15", "pretrain.warmup_epochs=0", "finetune.warmup_epochs=1",
                  "finetune.base_lr=1e-2", "train.progress=false", f"train.out={out}"]) == 0
    return out


def test_export_checks_itself_and_matches_pytorch(run, capsys):
    ckpt = run / "finetune" / "checkpoint.pt"
    capsys.readouterr()
    assert export_cli.main([str(ckpt), str(run / "model.onnx")]) == 0
    out = capsys.readouterr().out
    assert ("checked: onnx.checker full check; ONNX Runtime against PyTorch on random and "
            "test images at batch 1, 7 and 64: largest logit difference ") in out
    model = onnx.load(str(run / "model.onnx"))
    assert not list(run.glob("*.onnx.data")) and not list(run.glob(".model.onnx.*"))
    assert model.opset_import[0].version >= 17
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["format"] == "mlit" and meta["kind"] == "finetune"
    assert json.loads(meta["model_config"])["embed_dim"] == 16 and meta["image_size"] == "12"
    assert json.loads(meta["normalization"])["mean"][0] == pytest.approx(0.3053)
    assert json.loads(meta["recipe"])["data"]["dataset"] == "digits"
    ops = {node.op_type for node in every_node(model.graph)}
    assert not ops & {"NonZero", "Loop"}  # no data-dependent shapes
    inputs = [i.name for i in model.graph.input]
    assert inputs == ["images"] and [o.name for o in model.graph.output] == ["logits",
                                                                              "experts"]
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value  # a dynamic batch axis
    # parity, again from here: ONNX Runtime against the sparse PyTorch path
    mf = modelfile.read(ckpt)
    reference = Deployable(module_to_export(mf, False, "torch")).eval()
    runner = session(run / "model.onnx")
    for b in BATCHES:
        x = torch.randn(b, 3, 12, 12, generator=torch.Generator().manual_seed(b))
        with torch.no_grad():
            ref, experts = reference(x)
        got, got_experts = runner.run(None, {"images": x.numpy()})
        assert got.shape == (b, 10) and got_experts.shape == experts.shape
        torch.testing.assert_close(torch.from_numpy(got), ref, atol=1e-4, rtol=0)
        assert (got.argmax(1) == ref.argmax(1).numpy()).all()


def test_mlit_eval_of_the_onnx_file_equals_the_checkpoint(run, capsys):
    ckpt = run / "finetune" / "checkpoint.pt"
    if not (run / "model.onnx").exists():
        assert export_cli.main([str(ckpt), str(run / "model.onnx")]) == 0
    capsys.readouterr()
    assert eval_cli.main([str(ckpt), "--json", "--out", str(run / "e1")]) == 0
    from_ckpt = json.loads(capsys.readouterr().out)
    assert eval_cli.main([str(run / "model.onnx"), "--json", "--out", str(run / "e2")]) == 0
    from_onnx = json.loads(capsys.readouterr().out)
    assert from_onnx["top1"] == from_ckpt["top1"] and from_onnx["images"] == 360
    assert from_onnx["loss"] == pytest.approx(from_ckpt["loss"], abs=1e-5)
    assert from_onnx["kind"] == "finetune, ONNX Runtime"
    assert len(from_onnx["expert_share"]) == 3
    assert sum(from_onnx["expert_share"][0]) == pytest.approx(1.0)


def test_the_int8_file_loads_and_its_accuracy_is_reported(run, capsys):
    capsys.readouterr()
    assert export_cli.main([str(run / "finetune" / "checkpoint.pt"), str(run / "int8.onnx"),
                            "--int8"]) == 0
    out = capsys.readouterr().out.splitlines()
    line = next(line for line in out if line.startswith("test top-1: "))
    int8 = float(line.split("int8 ")[1].split(",")[0])
    fp32 = float(line.split("fp32 ")[1])
    assert 0.6 < fp32 and abs(int8 - fp32) < 0.05, line
    # the int8 file checked as itself, against the fp32 graph it was quantised from
    checked = next(line for line in out if line.startswith("checked the int8 file: "))
    assert "onnx.checker full check" in checked and "at batch 1, 7 and 64" in checked
    diff = float(checked.split("difference from the fp32 file ")[1].split(",")[0])
    agreed = float(checked.split("top-1 class on ")[1].split("%")[0])
    assert 0 < diff < 5 and agreed >= 80, checked
    assert out[1].startswith("checked the fp32 graph it was quantised from: ")
    model = onnx.load(str(run / "int8.onnx"))
    assert {p.key: p.value for p in model.metadata_props}["quantized"] == "int8"
    assert any(n.op_type in ("DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul")
               for n in in_one_pass(model.graph))
    # every weight GEMM (the patch embedding, Q/K/V, the router with the experts, the head)
    # holds int8 weights; the attention's products of activations stay fp32
    fp32 = onnx.load(str(run / "model.onnx"))
    weight_products = sum(n.op_type == "Gemm" for n in in_one_pass(fp32.graph)) + 1
    int8_weights = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8
                    and len(t.dims) == 2]
    assert len(int8_weights) == weight_products
    assert sum(n.op_type == "MatMul" for n in in_one_pass(model.graph)) == 2 * 3  # 3 layers
    capsys.readouterr()
    assert eval_cli.main([str(run / "int8.onnx"), "--json", "--out", str(run / "e3")]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == pytest.approx(int8, abs=1e-4)


def test_a_damaged_or_foreign_onnx_file_is_one_line(run, tmp_path, capsys):
    (tmp_path / "random.onnx").write_bytes(b"\x08\x07garbage" * 50)
    foreign = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])]))
    onnx.save(foreign, str(tmp_path / "foreign.onnx"))
    for name, words in (("random.onnx", "is not a readable ONNX file"),
                        ("foreign.onnx", "is not an mLiT ONNX export"),
                        ("missing.onnx", "does not exist")):
        capsys.readouterr()
        assert eval_cli.main([str(tmp_path / name)]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("mlit.eval: ") and words in lines[0]


def test_an_mae_needs_encoder_only_and_the_encoder_exports(run, capsys):
    ckpt = str(run / "pretrain" / "checkpoint.pt")
    capsys.readouterr()
    assert export_cli.main([ckpt, str(run / "mae.onnx")]) == 2
    assert "add --encoder-only" in capsys.readouterr().err
    assert export_cli.main([ckpt, str(run / "encoder.onnx"), "--encoder-only"]) == 0
    checked = capsys.readouterr().out.splitlines()[1]  # an encoder has features, no classes
    assert "largest feature difference" in checked and "classes" not in checked
    model = onnx.load(str(run / "encoder.onnx"))
    assert [o.name for o in model.graph.output] == ["tokens", "experts"]
    assert not (run / "mae.onnx").exists()


@pytest.mark.slow
def test_bench_infer_quick_runs(tmp_path):
    done = subprocess.run([sys.executable, "tools/bench_infer.py", "--quick", "--json",
                           str(tmp_path / "b.json")], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("machine: ")
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    backends = {(r["model"], r["backend"]) for r in rows}
    assert backends == {("mlit_xxs", "eager"), ("mlit_xxs", "onnxruntime fp32"),
                        ("mlit_xxs", "onnxruntime int8"), ("resnet56", "eager"),
                        ("resnet56", "onnxruntime fp32")}
    assert all(r["latency_ms"] > 0 and r["images_s"] > 0 for r in rows)
    assert "goals, 1 thread:" in done.stdout
    # every figure against the machine's peak, counted with the model's own FLOPs
    xxs = [r for r in rows if r["model"] == "mlit_xxs"]
    assert all(r["mflops_per_image"] == pytest.approx(236.3, abs=0.1) for r in xxs)
    for r in rows:
        probe = r["peak_probe_gflops"]
        assert set(probe) == {"torch", "onnxruntime"}
        assert r["peak_gflops"] == max(probe.values()) > 0
        assert r["peak_fraction"] == pytest.approx(
            r["images_s"] * r["mflops_per_image"] / 1e3 / r["peak_gflops"])
    assert xxs[0]["products_gflops"] > 0  # its own matrix products, probed
    assert "share of the peak" in done.stdout and "peak %" in done.stdout


def test_a_failed_check_is_one_line_and_leaves_no_file(run, monkeypatch, capsys):
    import mlit.inference.onnx_checks

    monkeypatch.setattr(mlit.inference.onnx_checks, "LOGIT_TOLERANCE", -1.0)  # nothing can pass
    capsys.readouterr()
    assert export_cli.main([str(run / "finetune" / "checkpoint.pt"),
                            str(run / "failed.onnx")]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "mlit.export: the ONNX graph disagrees with PyTorch on random images at batch 1")
    assert lines[0].endswith("no file was written")
    assert not (run / "failed.onnx").exists() and not list(run.glob(".failed.onnx.*"))


def relabel(source: Path, target: Path, **changes) -> Path:
    """A copy of an ONNX export whose metadata says something else."""
    model = onnx.load(str(source))
    meta = {p.key: p.value for p in model.metadata_props}
    for key, value in changes.items():
        if key == "model_config":
            value = json.dumps({**json.loads(meta["model_config"]), **value})
        meta[key] = value
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, meta)
    onnx.save(model, str(target))
    return target


def test_the_metadata_is_held_against_the_graph_and_its_weights(run, tmp_path, capsys):
    """Every export carries its weights' digest; a file whose metadata does not describe
    its graph, or whose weights were changed, is one line naming what disagrees."""
    source = run / "model.onnx"
    if not source.exists():
        assert export_cli.main([str(run / "finetune" / "checkpoint.pt"), str(source)]) == 0
    model = onnx.load(str(source))
    meta = {p.key: p.value for p in model.metadata_props}
    assert len(meta["weights_sha256"]) == 64
    flipped = onnx.load(str(source))
    weights = max(flipped.graph.initializer, key=lambda t: len(t.raw_data))
    weights.raw_data = bytes(b ^ 0xFF for b in weights.raw_data[:200]) + weights.raw_data[200:]
    onnx.save(flipped, str(tmp_path / "flipped.onnx"))
    foreign = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])]))
    foreign.metadata_props.extend(model.metadata_props)
    del foreign.metadata_props[[p.key for p in foreign.metadata_props].index("weights_sha256")]
    onnx.save(foreign, str(tmp_path / "copied.onnx"))
    cases = {
        "flipped.onnx": "its weights do not match the weights_sha256 in its metadata",
        "copied.onnx": "the graph has no 'images' input (it has x, y): not an mLiT export",
        relabel(source, tmp_path / "classes.onnx", model_config={"num_classes": 3}).name:
            "the graph's 'logits' is ['batch', 10], its metadata's model_config makes it "
            "['B', 3]",
        relabel(source, tmp_path / "top_k.onnx", model_config={"top_k": 1}).name:
            "the graph's 'experts' is ['batch', 3, 17, 2]",
        relabel(source, tmp_path / "size.onnx", image_size="36").name:
            "metadata image_size 36 is not its model_config's 12",
        relabel(source, tmp_path / "std.onnx", normalization=json.dumps(
            {"mean": [0.3, 0.3, 0.3], "std": [-0.37, 0.37, 0.37]})).name:
            "each must lie in [0, 1], std above 0",
        relabel(source, tmp_path / "fp4.onnx", quantized="fp4").name: "quantized: ",
        relabel(source, tmp_path / "names.onnx", class_names='["a", "b"]').name:
            "metadata class_names has 2 names for a model of 10 classes",
    }
    for name, words in cases.items():
        capsys.readouterr()
        assert eval_cli.main([str(tmp_path / name)]) == 2, name
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"mlit.eval: {tmp_path / name}: ")
        assert words in lines[0], (name, lines[0])


def test_a_model_name_its_config_does_not_have_is_not_reported(run, tmp_path, capsys):
    """model_name 'mlit_s' in the metadata of a smaller model's graph: the file is reported
    by the name its model_config's shape has (the config is held against the graph)."""
    source = run / "model.onnx"
    if not source.exists():
        assert export_cli.main([str(run / "finetune" / "checkpoint.pt"), str(source)]) == 0
    held = modelfile.guess_name(read_onnx(source).config)
    relabelled = relabel(source, tmp_path / "named.onnx", model_name="mlit_s")
    assert held != "mlit_s" and read_onnx(relabelled).name == held
    capsys.readouterr()
    assert eval_cli.main([str(relabelled)]) == 0
    assert capsys.readouterr().out.startswith(f"{relabelled}: {held} (")


def test_onnx_files_on_the_wrong_path_say_what_they_are(run, tmp_path, capsys):
    import mlit
    from mlit.files.checkpoint import CheckpointError

    source = run / "model.onnx"
    if not source.exists():
        assert export_cli.main([str(run / "finetune" / "checkpoint.pt"), str(source)]) == 0
    with pytest.raises(CheckpointError, match=r"is an ONNX export, for ONNX Runtime \(python "
                                              r"-m mlit.eval .* runs it\)"):
        mlit.load(source)
    assert export_cli.main([str(source), str(tmp_path / "again.safetensors")]) == 2
    assert "is an ONNX export, for ONNX Runtime" in capsys.readouterr().err
    (tmp_path / "dir.onnx").mkdir()
    assert eval_cli.main([str(tmp_path / "dir.onnx")]) == 2
    assert capsys.readouterr().err.strip().endswith("dir.onnx is a folder, not an ONNX file")
    (tmp_path / ".onnx").write_bytes(b"not onnx")
    assert eval_cli.main([str(tmp_path / ".onnx")]) == 2
    assert "is not a readable ONNX file" in capsys.readouterr().err


def test_on_a_dataset_of_another_class_count_onnx_is_refused_as_pt_is(run, capsys):
    source = run / "model.onnx"
    if not source.exists():
        assert export_cli.main([str(run / "finetune" / "checkpoint.pt"), str(source)]) == 0
    for file in (source, run / "finetune" / "checkpoint.pt"):
        capsys.readouterr()
        assert eval_cli.main([str(file), "data.dataset=cifar100"]) == 2
        assert capsys.readouterr().err.strip() == (
            f"mlit.eval: data.dataset=cifar100: has 100 classes, the model in {file} "
            "predicts 10")


def test_long_names_and_a_killed_exports_leftovers(run, tmp_path, capsys):
    ckpt = str(run / "finetune" / "checkpoint.pt")
    long = tmp_path / ("a" * 240 + ".onnx")
    assert export_cli.main([ckpt, str(long)]) == 2
    assert ("the file name is 245 bytes; it is written through a temporary name 14 bytes "
            "longer, so it may have at most 241") in capsys.readouterr().err
    leftover = tmp_path / ".m.onnx.abcd1234"  # what kill -9 leaves mid-export
    leftover.mkdir()
    (leftover / "fp32.onnx").write_bytes(b"partial")
    assert export_cli.main([ckpt, str(tmp_path / "m.onnx"), "--int8", "--encoder-only"]) == 0
    assert not leftover.exists()
    assert "test top-1 not measured: an encoder alone has no classes to score" in \
        capsys.readouterr().out


@pytest.mark.parametrize("args, words", [
    (["--models", ",,"], "--models ',,': give model names separated by commas"),
    (["--models", "nosuch"], "--models: nosuch is not a model this benchmark knows ("),
    (["--json", "/proc/x.json"], "--json /proc/x.json: cannot write there"),
])
def test_bench_infer_checks_its_flags_before_any_work(monkeypatch, capsys, args, words):
    status, out, err = tool_main("bench_infer", args, monkeypatch, capsys)  # no model measured
    assert status == 2 and out == "" and err.startswith("bench_infer: ") and words in err
    assert err.count("\n") == 1
