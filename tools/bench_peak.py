"""The machine's own fp32 limit, for tools/bench_infer.py: GEMM probes run in the process that
measures a model, at the thread count it is measured at.

- the peak: a large square product (PEAK_SIZE^3) in PyTorch and in ONNX Runtime (MLAS), the
  better of the two: the most fp32 work per second this machine's libraries do;
- the model's own matrix products: every MatMul and Gemm of the model's ONNX graph at the
  batch measured, each alone in ONNX Runtime, their FLOPs over their summed time: what the
  graph's products could reach if nothing else took time;
- the model's work: its forward FLOPs per image as tools/param_count.py counts them (the
  sparse path for mLiT, mlit/model/flops.py), so that a graph computing more than the model
  needs never looks better; torch.utils.flop_counter for the other models.

Run alone, it prints the peak at the thread counts asked:

    python tools/bench_peak.py [--threads 1,2]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

PEAK_SIZE = 1024


def rate(fn, flops: float, seconds: float = 1.0) -> float:
    """GFLOP/s of fn() (flops each), the best of three timed stretches after a warm-up."""
    fn()
    best = float("inf")
    for _ in range(3):
        runs, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 3:
            fn()
            runs += 1
        best = min(best, (time.perf_counter() - start) / runs)
    return flops / best / 1e9


def matmul_session(a_shape: list[int], b_shape: list[int], threads: int, constant_b: bool):
    """An ONNX Runtime session of one MatMul (B a weight when constant_b), and its feeds."""
    from onnx import TensorProto, helper, numpy_helper

    from mlit.inference.onnx_runtime import session

    rng = np.random.default_rng(0)
    b = rng.standard_normal(b_shape, dtype=np.float32)
    inputs = [helper.make_tensor_value_info("a", TensorProto.FLOAT, a_shape)]
    inits = [numpy_helper.from_array(b, "b")] if constant_b else []
    if not constant_b:
        inputs.append(helper.make_tensor_value_info("b", TensorProto.FLOAT, b_shape))
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "probe", inputs,
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, None)],
                              inits)
    runner = session(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]),
                     threads=threads)
    feeds = {"a": rng.standard_normal(a_shape, dtype=np.float32)}
    if not constant_b:
        feeds["b"] = b
    return runner, feeds


def square_peak(threads: int) -> dict[str, float]:
    """GFLOP/s of PEAK_SIZE^3 in PyTorch and ONNX Runtime, and the better: `peak`."""
    n = PEAK_SIZE
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    found = {"torch": rate(lambda: torch.mm(a, b), 2 * n**3)}
    runner, feeds = matmul_session([n, n], [n, n], threads, constant_b=True)
    found["onnxruntime"] = rate(lambda: runner.run(None, feeds), 2 * n**3)
    found["peak"] = max(found.values())
    return found


def graph_products(path: Path, batch: int) -> list[tuple[list[int], list[int], bool]]:
    """(A's shape, B's shape, B is a weight) of every MatMul and Gemm in the ONNX file at
    `path`, its batch axis fixed at `batch` (ONNX shape inference)."""
    import onnx

    model = onnx.load(str(path))
    for value in model.graph.input:
        dim = value.type.tensor_type.shape.dim
        if dim and not dim[0].HasField("dim_value"):
            dim[0].dim_value = batch
    model = onnx.shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*model.graph.value_info, *model.graph.input]}
    weights = {t.name: list(t.dims) for t in model.graph.initializer}
    products = []
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm"):
            continue
        a, b = node.input[0], node.input[1]
        if a not in shapes or not all(shapes[a]):
            continue  # a shape inference could not fix: left out of the probe
        b_shape = weights.get(b, shapes.get(b))
        if not b_shape or not all(b_shape):
            continue
        attrs = {x.name: x.i for x in node.attribute}
        if node.op_type == "Gemm" and attrs.get("transB"):
            b_shape = b_shape[::-1]
        a_shape = shapes[a][::-1] if node.op_type == "Gemm" and attrs.get("transA") else shapes[a]
        products.append((a_shape, b_shape, b in weights))
    return products


def product_flops(a_shape: list[int], b_shape: list[int]) -> float:
    batch = np.broadcast_shapes(tuple(a_shape[:-2]), tuple(b_shape[:-2]))
    return 2.0 * float(np.prod(batch)) * a_shape[-2] * a_shape[-1] * b_shape[-1]


def graph_products_rate(path: Path, batch: int, threads: int) -> float | None:
    """GFLOP/s of the graph's own matrix products, each alone in ONNX Runtime: their total
    FLOPs over their total time (repeated shapes timed once, counted as often as they run)."""
    counts: dict[tuple, int] = {}
    for a_shape, b_shape, constant in graph_products(path, batch):
        key = (tuple(a_shape), tuple(b_shape), constant)
        counts[key] = counts.get(key, 0) + 1
    if not counts:
        return None
    flops = seconds = 0.0
    for (a_shape, b_shape, constant), n in counts.items():
        runner, feeds = matmul_session(list(a_shape), list(b_shape), threads, constant)
        f = product_flops(list(a_shape), list(b_shape))
        gflops = rate(lambda: runner.run(None, feeds), f, seconds=0.1)
        flops += n * f
        seconds += n * f / (gflops * 1e9)
    return flops / seconds / 1e9


def model_flops(model: torch.nn.Module, size: int) -> float:
    """Forward FLOPs per image: param_count.py's (the sparse path) for mLiT models, the
    flop counter's for the others."""
    from torch.utils.flop_counter import FlopCounterMode

    from mlit.model.flops import forward_flops

    cfg = getattr(model, "cfg", None) or getattr(getattr(model, "model", None), "cfg", None)
    if cfg is not None:
        return forward_flops(cfg)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(2, 3, size, size))
    return counter.get_total_flops() / 2


def main(argv=None) -> int:
    from mlit.cli import numbers

    parser = argparse.ArgumentParser(description="the machine's fp32 peak: a "
                                     f"{PEAK_SIZE}^3 product in PyTorch and ONNX Runtime")
    parser.add_argument("--threads", default=f"1,{os.cpu_count() or 1}",
                        type=numbers(int, 1),
                        help="comma list of thread counts (default 1 and every core)")
    args = parser.parse_args(argv)
    print(f"fp32 GFLOP/s of a {PEAK_SIZE}^3 product, the best of three stretches")
    for threads in args.threads:
        found = square_peak(threads)
        print(f"{threads} thread(s): " + ", ".join(f"{k} {v:.1f}" for k, v in found.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
