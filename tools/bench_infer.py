"""CPU inference side by side in one run: mLiT-S/XS/XXS in PyTorch eager, torch.compile,
ONNX Runtime fp32 and int8, beside the dense ViTs of their shapes and the tiny models people
deploy, all with random weights at their own input sizes, and every figure set against the
machine's own fp32 limit.

    python tools/bench_infer.py                 # every model, 1 and 2 threads and every core
    python tools/bench_infer.py --quick         # a smoke run: XXS and ResNet-56, 1 thread
    python tools/bench_infer.py --profile       # also ONNX Runtime's profile of XXS

References: the dense ViT of each mLiT's depth, width and parameter count (model.ffn=mlp,
vit_*_dense), a CIFAR ResNet-56 (He et al. 2016; the paper's Table 7 reference, defined here:
no library ships it), and timm's mobilevit_xxs and deit_tiny_patch16_224 when timm is
installed. mLiT and the dense ViTs are written as `mlit.export` writes them
(mlit/inference/onnx_graph.py), the others by torch.onnx's exporter.

Per model, backend and thread count: batch 1 latency (median and 90th percentile over the
timed runs, warm-up excluded) and batch 64 images/s, each the best of three rounds that take
the backends in turn (a round disturbed by the machine's neighbours is one of three); the
GFLOP/s those images/s imply with the model's own forward FLOPs (tools/param_count.py's
count, the sparse path for mLiT) and their share of the machine's peak, measured in the same
process at that thread count (tools/bench_peak.py: a 1024^3 product in PyTorch and ONNX
Runtime, the better; and the model's own matrix products, each alone); the ONNX file's size;
and the peak resident memory of the process that measured that model. Each model is measured
in a process of its own, so one model's memory does not count for another.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from mlit.cli import numbers, run_command
from mlit.files.atomic import write_json
from mlit.files.paths import output_file

from bench_infer_models import MLIT, build, model_list
from bench_infer_report import print_goals, print_profile, print_table, profile_xxs
from bench_peak import graph_products_rate, model_flops, square_peak

RUNS = (60, 12)  # timed batch-1 and batch-64 runs per backend, over ROUNDS rounds
ROUNDS = 3


# -- measuring one model ------------------------------------------------------------------------
def onnx_files(name: str, model: nn.Module, size: int, how: str, folder: Path) -> dict:
    """{backend: ONNX file}: mLiT and the dense ViTs as `mlit.export` writes them (int8 too,
    for mLiT), with "plain", the graph before chunking, for the products probe; the other
    models through torch.onnx's exporter."""
    from mlit.inference.onnx_export import write_graph, write_graphs

    fp32, int8 = folder / f"{name}.onnx", folder / f"{name}.int8.onnx"
    if how == "torch":
        write_graph(model, size, fp32, ["logits"])
        return {"onnxruntime fp32": fp32}
    plain = folder / f"{name}.products.onnx"
    # a dense ViT's module sits inside LogitsOnly
    write_graphs(model if how == "mlit" else model.model, fp32, int8 if how == "mlit" else None,
                 keep_plain=plain)
    files = {"onnxruntime fp32": fp32, "plain": plain}
    if how == "mlit":
        files["onnxruntime int8"] = int8
    return files


def caller(fn, threads: int):
    """images -> outputs, for a PyTorch module or an ONNX file run at `threads`."""
    from mlit.inference.onnx_runtime import session

    if isinstance(fn, Path):
        runner = session(fn, threads=threads)
        out_name = runner.get_outputs()[0].name
        return lambda x: runner.run([out_name], {"images": x.numpy()})

    def call(x):
        with torch.no_grad():
            return fn(x)
    return call


def timings(fn, runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def measure(name: str, threads: list[int], quick: bool, folder: Path) -> list[dict]:
    from mlit.inference.onnx_chunks import CHUNK

    torch.manual_seed(0)
    model, size, how = build(name)
    backends = {"eager": model}
    if name in MLIT and not quick:
        backends["compile"] = torch.compile(model)
    files = onnx_files(name, model, size, how, folder)
    plain = files.pop("plain", None)  # the graph without the chunking, for the products probe
    big = 8 if quick else 64
    runs = (5, 2) if quick else (RUNS[0] // ROUNDS, RUNS[1] // ROUNDS)
    flops = model_flops(model, size)
    params = sum(p.numel() for p in model.parameters())
    rows = []
    for n_threads in threads:
        peak = square_peak(n_threads)  # sets torch's thread count too
        # mLiT's and the dense ViT's work is all MatMul and Gemm, run CHUNK images at a time
        products = (graph_products_rate(plain, min(big, CHUNK), n_threads) if plain else None)
        calls = {backend: caller(fn, n_threads) for backend, fn in
                 [*backends.items(), *files.items()]}
        one = torch.randn(1, 3, size, size)
        many = torch.randn(big, 3, size, size)
        for fn in calls.values():  # warm-up (and torch.compile's compilation)
            timings(lambda fn=fn: fn(one), 0, 5)
            timings(lambda fn=fn: fn(many), 0, 2)
        # ROUNDS rounds, the backends in turn: a round disturbed by the machine's neighbours
        # is one of several, and the best round's median stands
        lat = {backend: [] for backend in calls}
        thr = {backend: [] for backend in calls}
        for _ in range(ROUNDS):
            for backend, fn in calls.items():
                lat[backend].append(timings(lambda fn=fn: fn(one), runs[0], 0))
                thr[backend].append(timings(lambda fn=fn: fn(many), runs[1], 0))
        for backend, fn in [*backends.items(), *files.items()]:
            best_lat = min(lat[backend], key=statistics.median)
            images_s = big / min(statistics.median(t) for t in thr[backend])
            gflops = images_s * flops / 1e9
            rows.append({"model": name, "backend": backend, "threads": n_threads,
                         "input": size, "params": params,
                         "latency_ms": 1e3 * statistics.median(best_lat),
                         "latency_p90_ms": 1e3 * sorted(best_lat)[int(0.9 * (len(best_lat) - 1))],
                         "batch": big, "images_s": images_s, "mflops_per_image": flops / 1e6,
                         "gflops": gflops, "peak_gflops": peak["peak"],
                         "peak_fraction": gflops / peak["peak"],
                         "peak_probe_gflops": {k: v for k, v in peak.items() if k != "peak"},
                         "products_gflops": products, "products_batch": min(big, CHUNK),
                         "products_fraction": products and gflops / products,
                         "file_mib": (fn.stat().st_size / 2**20 if isinstance(fn, Path)
                                      else None)})
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for row in rows:
        row["peak_rss_mib"] = rss
    return rows


# -- the run --------------------------------------------------------------------------------------
def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnxruntime

    return (f"{cpu}, {os.cpu_count()} logical cores; torch {torch.__version__}, onnxruntime "
            f"{onnxruntime.__version__}, Python {platform.python_version()}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="XXS and ResNet-56, 1 thread")
    parser.add_argument("--models", help="comma list (default: all there are)")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--json", metavar="PATH", help="also write every figure to PATH")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a child: measure this model
    parser.add_argument("--threads", type=numbers(int, 1),
                        help="comma list of thread counts (default 1, 2 and every core; "
                             "--quick: 1)")
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        rows = measure(args.one, args.threads, args.quick,
                       Path(args.folder))
        print(json.dumps(rows))
        if args.profile and args.one == "mlit_xxs":
            print(json.dumps({b: profile_xxs(Path(args.folder), b) for b in (1, 64)}))
        return 0
    return run_command("bench_infer", lambda: benchmark(args))


def benchmark(args) -> int:
    """Every model in a child process of its own, then the table and the goals; exit 1 when a
    model failed to measure."""
    out = output_file(args.json, "--json") if args.json else None  # before any work
    names = model_list(args.models, args.quick)
    cores = os.cpu_count() or 1
    threads = args.threads or ([1] if args.quick else sorted({1, min(2, cores), cores}))
    failed = []
    print(f"machine: {machine()}")
    lat_runs, thr_runs = (5, 2) if args.quick else (RUNS[0] // ROUNDS, RUNS[1] // ROUNDS)
    print(f"random weights, float32 inputs; batch 1 latency: the median of {lat_runs} runs, "
          f"images/s at batch {8 if args.quick else 64}: of {thr_runs}; each the best of "
          f"{ROUNDS} rounds taking the backends in turn; warm-up excluded\n")
    rows, profile = [], None
    with tempfile.TemporaryDirectory() as folder:
        for name in names:
            cmd = [sys.executable, __file__, "--one", name, "--threads",
                   ",".join(map(str, threads)), "--folder", folder]
            cmd += ["--quick"] if args.quick else []
            cmd += ["--profile"] if args.profile else []
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                print(f"{name}: failed: {(done.stderr.strip().splitlines() or [''])[-1]}")
                failed.append(name)
                continue
            lines = done.stdout.strip().splitlines()
            rows += json.loads(lines[-2 if args.profile and name == "mlit_xxs" else -1])
            if args.profile and name == "mlit_xxs":
                profile = json.loads(lines[-1])
    print_table(rows)
    print_goals(rows, threads, big=8 if args.quick else 64)
    if profile:
        print_profile(profile)
    if out:
        write_json(out, {"machine": machine(), "rows": rows}, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
