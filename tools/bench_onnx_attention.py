"""One grouped-query attention layer of an mLiT in ONNX Runtime, three ways side by side: the
exported graph's plain opset-18 form (mlit/inference/onnx_graph.py: each group's query heads
stacked against its one key and value), ONNX's opset-23 Attention with kv_num_heads, and ONNX
Runtime's com.microsoft.MultiHeadAttention with the keys and values repeated per head (its
GroupQueryAttention is causal only: a ViT cannot use it). Each form includes the Q/K/V and
output projections, and all three are checked against PyTorch first.

    python tools/bench_onnx_attention.py [--model mlit_xxs] [--batch 64] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

import mlit
from mlit.cli import number
from mlit.inference.onnx_graph import GraphBuilder, attention, linear_weights
from mlit.inference.onnx_runtime import session


def plain(g: GraphBuilder, attn, tokens: int) -> str:
    x = g.reshape("x", [-1, attn.num_heads * attn.head_dim], "tokens")
    return g.reshape(attention(g, x, attn, tokens, "attn"), [-1, tokens, attn.o_proj.out_features],
                     "y3")


def qkv(g: GraphBuilder, attn) -> tuple[str, str, str]:
    """Q, K, V (B, N, width) from one GEMM of the usual [Q | K | V] layout."""
    w = torch.cat([p.weight for p in (attn.q_proj, attn.k_proj, attn.v_proj)]).t()
    b = torch.cat([p.bias for p in (attn.q_proj, attn.k_proj, attn.v_proj)])
    proj = g.op("Add", [g.op("MatMul", ["x", g.weight("qkv.w", w)], "qkv.mm"),
                        g.weight("qkv.b", b)], "qkv")
    kv = attn.num_kv_groups * attn.head_dim
    return g.op("Split", [proj, g.weight("split", [attn.q_proj.out_features, kv, kv])],
                "qkv.split", outputs=3, axis=2)


def out_projection(g: GraphBuilder, y: str, attn) -> str:
    w, b = linear_weights(attn.o_proj)
    return g.op("Add", [g.op("MatMul", [y, g.weight("out.w", w)], "out.mm"),
                        g.weight("out.b", b)], "out")


def attention23(g: GraphBuilder, attn, tokens: int) -> str:
    q, k, v = qkv(g, attn)
    y = g.op("Attention", [q, k, v], "attention", q_num_heads=attn.num_heads,
             kv_num_heads=attn.num_kv_groups)
    return out_projection(g, y, attn)


def multi_head(g: GraphBuilder, attn, tokens: int) -> str:
    q, k, v = qkv(g, attn)
    G, hd, r = attn.num_kv_groups, attn.head_dim, attn.num_heads // attn.num_kv_groups
    repeated = []
    for name, t in (("k", k), ("v", v)):
        t = g.reshape(t, [-1, tokens, G, 1, hd], f"{name}.groups")
        t = g.op("Expand", [t, g.weight(f"{name}.r", [1, 1, 1, r, 1])], f"{name}.expand")
        repeated.append(g.reshape(t, [-1, tokens, G * r * hd], f"{name}.heads"))
    y = g.op("MultiHeadAttention", [q, *repeated], "mha", domain="com.microsoft",
             num_heads=attn.num_heads)
    return out_projection(g, y, attn)


FORMS = {"plain opset 18 (the export's)": (plain, 18),
         "opset 23 Attention": (attention23, 23),
         "com.microsoft.MultiHeadAttention, K/V repeated": (multi_head, 18)}


def form_session(form, attn, tokens: int, threads: int):
    from onnx import TensorProto, helper  # here: --help and a wrong flag answer without onnx

    build, opset = FORMS[form]
    g = GraphBuilder()
    with torch.no_grad():
        y = build(g, attn, tokens)
    g.op("Identity", [y], "y")
    width = attn.num_heads * attn.head_dim
    graph = helper.make_graph(
        g.nodes, "attention", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                             ["batch", tokens, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], g.initializers)
    imports = [helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)]
    return session(helper.make_model(graph, opset_imports=imports), threads=threads)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mlit_xxs", choices=list(mlit.CONFIGS))
    parser.add_argument("--batch", type=number(int, 1), default=64)
    parser.add_argument("--threads", type=number(int, 1), default=1)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = mlit.create_model(args.model).eval()
    attn, cfg = model.encoder.layers[0].attn, model.cfg
    tokens = cfg.num_patches + 1
    x = torch.randn(args.batch, tokens, cfg.embed_dim)
    with torch.no_grad():
        want = attn(x).numpy()
    print(f"{args.model} attention layer: {attn.num_heads} query heads in {attn.num_kv_groups} "
          f"key/value groups of {attn.head_dim}, {tokens} tokens, batch {args.batch}, fp32, "
          f"{args.threads} thread(s)")
    times = {}
    for form in FORMS:
        runner = form_session(form, attn, tokens, args.threads)
        feeds = {"x": x.numpy()}
        err = float(np.abs(runner.run(None, feeds)[0] - want).max())
        for _ in range(3):
            runner.run(None, feeds)
        runs = []
        for _ in range(20):
            start = time.perf_counter()
            runner.run(None, feeds)
            runs.append(time.perf_counter() - start)
        times[form] = statistics.median(runs)
        print(f"  {form:<48} {1e3 * times[form]:7.2f} ms  (largest difference from PyTorch "
              f"{err:.1e})")
    base = times[next(iter(FORMS))]
    print("  time against the plain form: " + ", ".join(
        f"{form.split(',')[0]} {t / base:.2f}x" for form, t in times.items()))


if __name__ == "__main__":
    main()
