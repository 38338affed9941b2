"""The exported graph (mlit/inference/onnx_graph.py): the sparse PyTorch path's numbers and
experts for every sharing arrangement, grouping of heads, head and an encoder alone; and lean:
no key or value repeated per head, no shape computed at run time, no Slice or Concat chain."""

from __future__ import annotations

from collections import Counter

import pytest

pytest.importorskip("onnxruntime")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import torch  # noqa: E402

import mlit  # noqa: E402
from mlit.inference.onnx_export import Deployable  # noqa: E402
from mlit.inference.onnx_graph import lean_graph  # noqa: E402
from mlit.inference.onnx_runtime import session  # noqa: E402
from mlit.model.encoder import MLiTEncoder  # noqa: E402


def written(module, tmp_path):
    onnx.checker.check_model(model := lean_graph(module), full_check=True)
    onnx.save(model, str(tmp_path / "m.onnx"))
    return model, session(tmp_path / "m.onnx")


@pytest.mark.parametrize("overrides", [
    {},  # mlit_micro: v_w2, 4 heads in 2 groups
    {"shared": "w_w2"}, {"shared": "w_v"},
    {"num_kv_groups": 1}, {"num_kv_groups": 4},  # multi-query, plain multi-head
    {"head": "mlp"}, {"top_k": 1}])
def test_the_graph_gives_the_sparse_paths_logits_and_experts(overrides, tmp_path):
    torch.manual_seed(0)
    model = mlit.create_model("mlit_micro", num_classes=7, moe_impl="torch", **overrides).eval()
    _, runner = written(model, tmp_path)
    reference = Deployable(model)
    for batch in (1, 5):
        x = torch.randn(batch, 3, 12, 12)
        with torch.no_grad():
            logits, experts = reference(x)
            ties = reference.routing_ties().view(experts.shape[1], batch, -1)
        got, got_experts = runner.run(None, {"images": x.numpy()})
        assert got.shape == (batch, 7) and got_experts.shape == tuple(experts.shape)
        torch.testing.assert_close(torch.from_numpy(got), logits, atol=1e-5, rtol=0)
        same = np.sort(got_experts, -1) == np.sort(experts.numpy(), -1)
        assert (same | ties.transpose(0, 1).numpy()[..., None]).all()


def test_an_encoder_alone_gives_the_final_tokens(tmp_path):
    torch.manual_seed(0)
    model = mlit.create_model("mlit_micro", moe_impl="torch").eval()
    encoder = model.encoder
    assert isinstance(encoder, MLiTEncoder)
    graph, runner = written(encoder, tmp_path)
    assert [o.name for o in graph.graph.output] == ["tokens", "experts"]
    x = torch.randn(3, 3, 12, 12)
    with torch.no_grad():
        tokens, _ = encoder(x)
    got, _ = runner.run(None, {"images": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(got), tokens, atol=1e-5, rtol=0)


def test_the_dense_vit_is_written_by_the_same_writer(tmp_path):
    torch.manual_seed(0)
    model = mlit.create_model("mlit_micro", num_classes=5, ffn="mlp").eval()
    graph, runner = written(model, tmp_path)
    assert [o.name for o in graph.graph.output] == ["logits"]  # no router, no experts
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        logits, _ = model(x)
    torch.testing.assert_close(torch.from_numpy(runner.run(None, {"images": x.numpy()})[0]),
                               logits, atol=1e-5, rtol=0)


def test_the_graph_is_lean():
    """mLiT-XXS (9 layers, 6 query heads in 3 key/value groups): per layer one Q/K/V GEMM, one
    GEMM for the router and every expert's projection, two Transposes around attention; no
    Expand (repeated K/V), no Shape arithmetic, one Pad for the dummy patch, one Concat (the
    experts output), no Slice; every Reshape's target a constant."""
    model = lean_graph(mlit.create_model("mlit_xxs").eval())
    ops = Counter(node.op_type for node in model.graph.node)
    assert not {"Expand", "Shape", "Slice", "ConstantOfShape", "Tile",
                "ScatterElements", "NonZero", "Cast"} & set(ops)
    assert ops["Concat"] == 1 and ops["Pad"] == 1 and ops["Gather"] == 1
    assert ops["Gemm"] == 9 * 4 + 1  # Q/K/V, attention out, MoE in, MoE out; the head
    assert ops["MatMul"] == 9 * 2 + 1  # scores and mixing per layer; the patch embedding
    assert ops["Transpose"] == 9 * 3 + 1  # Q/K/V to groups, K^T, back to tokens; patches
    assert ops["Softmax"] == 9 * 2  # attention, and the top-k gate
    constants = {t.name for t in model.graph.initializer}
    assert all(node.input[1] in constants for node in model.graph.node
               if node.op_type == "Reshape")
    qkv = next(t for t in model.graph.initializer if t.name == "layers.0.attn.qkv.weight")
    assert list(qkv.dims) == [108, 3 * (2 + 2) * 18]  # 3 groups: 2 query heads, K, V each


def test_bench_onnx_attention_compares_three_forms_that_agree():
    import re
    import subprocess
    import sys
    from pathlib import Path

    done = subprocess.run([sys.executable, "tools/bench_onnx_attention.py", "--batch", "2"],
                          cwd=Path(__file__).parents[1], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    diffs = [float(d) for d in re.findall(r"largest difference from PyTorch (\S+)\)",
                                          done.stdout)]
    assert len(diffs) == 3 and max(diffs) < 1e-4, done.stdout
    assert "time against the plain form: plain opset 18 (the export's) 1.00x" in done.stdout


def test_the_chunked_graph_gives_every_batch_size_the_same_outputs(tmp_path):
    """CHUNK images at a time in a Scan, the rest in one pass: batches below, at, between and
    above whole chunks give the unchunked graph's outputs, row for row."""
    from mlit.inference.onnx_chunks import CHUNK, chunked

    torch.manual_seed(0)
    plain = lean_graph(mlit.create_model("mlit_micro", num_classes=7).eval())
    model = chunked(plain)
    onnx.checker.check_model(model, full_check=True)
    assert [n.op_type for n in model.graph.node].count("If") == 2
    onnx.save(plain, str(tmp_path / "plain.onnx"))
    onnx.save(model, str(tmp_path / "chunked.onnx"))
    one_pass, chunks = session(tmp_path / "plain.onnx"), session(tmp_path / "chunked.onnx")
    assert [o.name for o in chunks.get_outputs()] == ["logits", "experts"]
    for batch in (1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 2):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 12, 12), dtype=np.float32)
        want, got = one_pass.run(None, {"images": x}), chunks.run(None, {"images": x})
        assert got[0].shape == (batch, 7) and got[1].shape == want[1].shape
        np.testing.assert_allclose(got[0], want[0], atol=1e-5, rtol=0)
        assert (got[1] == want[1]).all()
