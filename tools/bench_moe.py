"""Expert-dispatch benchmark: forward and forward+backward, side by side in one run.

    python tools/bench_moe.py                  # GPU: bf16 and fp16, mLiT-S/XS/XXS layers
    python tools/bench_moe.py --quick          # a fast sanity run (CPU: fp32, small N)
    python tools/bench_moe.py --step           # also a full mLiT-S training step per impl

Implementations (mlit/model/dispatch.py): naive = per-expert gather, compute, index_add (the
sparse reference); dense = every expert on every token (x V, and x [W_1..W_E] in one GEMM),
summed weighted by the gates, eager and under torch.compile; triton = the fused kernel (CUDA
only).
Shapes: the first layer (h1, 3 experts) and the last (hL, 5 experts) of each size, and its
MAE decoder's layer, with N = 448 x 145 tokens (fine-tune batch) and N = 840 x 37 (MAE encoder:
36 visible patches + the dummy).
Printed: median ms, speed-up over the best baseline and over the naive loop, achieved
TFLOP/s (useful FLOPs: V, the k routed W_e, W2; backward counted as 2x forward), GB/s
(x, gates, weights and y once, H written and read once) and peak memory of fwd+bwd.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
from torch.utils import benchmark

import mlit
from mlit.cli import names_from, number, numbers
from mlit.model.dispatch import expert_mixture
from mlit.model.mixtures import dense_expert_mixture, torch_expert_mixture

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def layer_shapes(model: str) -> list[tuple[str, int, int, int]]:
    cfg = mlit.model_config(model)
    hidden, experts = cfg.hidden_sizes(), cfg.experts_per_layer()
    return [(f"{model} first", cfg.embed_dim, hidden[0], experts[0]),
            (f"{model} last", cfg.embed_dim, hidden[-1], experts[-1]),
            (f"{model} decoder", cfg.decoder_embed_dim, cfg.decoder_hidden,
             cfg.decoder_num_experts)]


def make_inputs(N, d, h, E, k, dtype, device):
    x = torch.randn(N, d, device=device, dtype=dtype)
    vals, idx = torch.randn(N, E, device=device).topk(k, dim=1)
    gates = torch.zeros(N, E, device=device).scatter(1, idx, vals.softmax(1))
    params = [torch.randn(E, d, h) * d**-0.5, torch.zeros(E, h), torch.randn(h, d) * d**-0.5,
              torch.zeros(h), torch.randn(d, h) * h**-0.5, torch.zeros(d)]
    params = [p.to(device=device, dtype=dtype).requires_grad_() for p in params]
    return x.requires_grad_(), gates.requires_grad_(), params


def median_seconds(fn, device, min_run_time: float) -> float:
    # the process's own intra-op threads (Timer's default is one), as training runs
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median


def implementations(device, compile_dense: bool):
    impls = {"naive": torch_expert_mixture, "dense": dense_expert_mixture}
    if compile_dense:
        impls["dense+compile"] = torch.compile(dense_expert_mixture, dynamic=False)
    if device.type == "cuda":
        impls["triton"] = lambda *a: expert_mixture(*a, impl="triton")
    return impls


def bench_layer(name, d, h, E, N, k, dtype, device, impls, min_run_time, records):
    x, gates, params = make_inputs(N, d, h, E, k, dtype, device)
    flops_fwd = 2 * N * d * h * (1 + k) + 2 * N * h * d
    elem = x.element_size()
    bytes_fwd = (2 * N * d + 2 * N * h) * elem + N * E * 4 + sum(p.numel() for p in params) * elem
    rows = {}
    for impl, fn in impls.items():
        def fwd():
            with torch.no_grad():
                return fn(x, gates, *params)

        def fwd_bwd():
            y = fn(x, gates, *params)
            y.backward(torch.ones_like(y))

        fwd(), fwd_bwd()  # warm-up (and compilation)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            fwd_bwd()
            torch.cuda.synchronize()
            peak = (torch.cuda.max_memory_allocated() - base) / 2**20
        else:
            peak = float("nan")
        rows[impl] = (median_seconds(fwd, device, min_run_time),
                      median_seconds(fwd_bwd, device, min_run_time), peak)
    baselines = [r for i, r in rows.items() if i != "triton"]
    best_fwd = min(r[0] for r in baselines)
    best_fb = min(r[1] for r in baselines)
    for impl, (t_f, t_fb, peak) in rows.items():
        records.append({"kind": "layer", "dtype": str(dtype).removeprefix("torch."),
                        "layer": name, "N": N, "d": d, "h": h, "E": E, "impl": impl,
                        "fwd_ms": t_f * 1e3, "fwd_bwd_ms": t_fb * 1e3,
                        "peak_mib": None if peak != peak else peak})
        print(f"{name:<13} {N:>6} {d:>4} {h:>4} {E:>2} {impl:<14} "
              f"{t_f * 1e3:>8.3f} {best_fwd / t_f:>5.2f}x {rows['naive'][0] / t_f:>5.2f}x  "
              f"{t_fb * 1e3:>8.3f} {best_fb / t_fb:>5.2f}x {rows['naive'][1] / t_fb:>5.2f}x  "
              f"{3 * flops_fwd / t_fb / 1e12:>7.2f} {3 * bytes_fwd / t_fb / 1e9:>7.1f} "
              f"{peak:>8.1f}")
    return rows


def bench_step(dtype, device, batch, min_run_time, records):
    """A full mLiT-S fine-tuning step (forward, backward, AdamW) per implementation."""
    print(f"\nmLiT-S training step, batch {batch}, 36x36 images, {dtype}")
    times = {}
    impls = ["torch", "dense"] + (["triton"] if device.type == "cuda" else [])
    for impl in impls:
        model = mlit.create_model("mlit_s", moe_impl=impl).to(device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        imgs = torch.randn(batch, 3, 36, 36, device=device)
        labels = torch.randint(0, 100, (batch,), device=device)

        def step():
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                logits, moe = model(imgs)
                loss = torch.nn.functional.cross_entropy(logits.float(), labels) + 0.5 * moe
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)

        step(), step()
        times[impl] = median_seconds(step, device, min_run_time)
    for impl, t in times.items():
        records.append({"kind": "step", "dtype": str(dtype).removeprefix("torch."),
                        "batch": batch, "impl": impl, "ms_per_step": t * 1e3})
        print(f"  moe_impl={impl:<7} {t * 1e3:8.2f} ms/step  {batch / t:9.0f} img/s  "
              f"{times['torch'] / t:5.2f}x vs torch")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtypes", type=names_from(DTYPES, "dtype"),
                        help="comma list of bf16, fp16, fp32 (default bf16,fp16 on a GPU, "
                             "fp32 on the CPU)")
    parser.add_argument("--models", default="mlit_s,mlit_xs,mlit_xxs",
                        type=names_from(mlit.CONFIGS, "model"))
    parser.add_argument("--tokens", type=numbers(int, 1),
                        help="comma list of token counts N (default 448x145 and 840x37; "
                             "--quick 2048)")
    parser.add_argument("--quick", action="store_true", help="small N, short timings")
    parser.add_argument("--no-compile", action="store_true", help="skip dense+compile")
    parser.add_argument("--step", action="store_true", help="also time a training step")
    parser.add_argument("--min-time", type=number(float, 0, low_open=True), default=None,
                        help="seconds of timing per measurement (default 0.5; --quick 0.05)")
    parser.add_argument("--json", metavar="PATH", help="also write every figure to PATH")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not args.no_compile:  # (Dynamo takes 2 s to import: only when it compiles)
        # the compiled baseline meets every layer shape with and without grad: keep them all
        torch._dynamo.config.recompile_limit = 64
    default = ["bf16", "fp16"] if device.type == "cuda" else ["fp32"]
    dtypes = [DTYPES[t] for t in args.dtypes or default]
    token_counts = args.tokens or ([2048] if args.quick else [448 * 145, 840 * 37])
    min_run_time = args.min_time or (0.05 if args.quick else 0.5)
    records: list[dict] = []
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"device: {name}; torch {torch.__version__}; top-k 2; random top-2 routing")
    if device.type != "cuda":
        print("no CUDA device: the Triton kernel is not timed (its correctness is tested "
              "under TRITON_INTERPRET=1)")
    impls = implementations(device, not args.no_compile)
    for dtype in dtypes:
        print(f"\ndtype {dtype}")
        print(f"{'layer':<13} {'N':>6} {'d':>4} {'h':>4} {'E':>2} {'impl':<14} "
              f"{'fwd ms':>8} {'/best':>6} {'/naive':>6}  {'f+b ms':>8} {'/best':>6} "
              f"{'/naive':>6}  {'TFLOP/s':>7} {'GB/s':>7} {'peak MiB':>8}")
        for model in args.models:
            for layer, d, h, E in layer_shapes(model):
                for N in token_counts:
                    bench_layer(layer, d, h, E, N, 2, dtype, device, impls, min_run_time,
                                records)
        if args.step:
            bench_step(dtype, device, 64 if args.quick else 448, min_run_time, records)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "torch": torch.__version__, "rows": records}, f,
                      indent=1)


if __name__ == "__main__":
    t0 = time.time()
    main()
    print(f"\n(total {time.time() - t0:.0f} s)", file=sys.stderr)
