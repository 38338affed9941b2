"""CPU inference side by side in one run: mLiT-S/XS/XXS in PyTorch eager, torch.compile,
ONNX Runtime fp32 and int8, beside the tiny models people deploy, all with random weights at
their own input sizes.

    python tools/bench_infer.py                 # every model, 1 thread and every core
    python tools/bench_infer.py --quick         # a smoke run: XXS and ResNet-56, 1 thread
    python tools/bench_infer.py --profile       # also ONNX Runtime's profile of XXS, batch 1

References: a dense ViT of mLiT-XXS's depth, width and parameter count (model.ffn=mlp, the
project's throughput reference), a CIFAR ResNet-56 (He et al. 2016; the paper's Table 7
reference, defined here: no library ships it), and timm's mobilevit_xxs and
deit_tiny_patch16_224 when timm is installed. mLiT is exported as `mlit.export` does
(mlit/inference/onnx_export.py: every expert in one GEMM, weighted by the top-k gate).

Per model, backend and thread count: batch 1 latency (median and 90th percentile over the
timed runs, warm-up excluded) and batch 64 images/s; the ONNX file's size; and the peak
resident memory of the process that measured that model (every backend of it). Each model
is measured in a process of its own, so one model's memory does not count for another.
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

from mlit.cli import run_command
from mlit.files.atomic import write_json
from mlit.files.paths import output_file

from bench_infer_models import MLIT, build, model_list

GOALS = [("mlit_xxs ONNX Runtime fp32 vs eager, batch 1 latency", 2.5),
         ("mlit_xxs ONNX Runtime fp32 vs eager, batch {big} images/s", 1.5),
         ("mlit_xxs ONNX Runtime int8 vs fp32, batch {big} images/s", 1.5),
         ("mlit_xxs vs mobilevit_xxs (ONNX Runtime each), batch {big} images/s", 1.0)]


# -- measuring one model ------------------------------------------------------------------------
def onnx_file(name: str, model: nn.Module, size: int, how: str, folder: Path) -> Path:
    from mlit.inference.onnx_export import Deployable, write_graph

    path = folder / f"{name}.onnx"
    if how == "mlit":  # as mlit.export writes it: the dense mixture, weighted by the gate
        dense = model.__class__(model.cfg.replace(moe_impl="dense"))
        dense.load_state_dict(model.state_dict())
        write_graph(Deployable(dense).eval(), size, path, ["logits", "experts"])
    else:
        write_graph(model, size, path, ["logits"])
    return path


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
    from mlit.inference.onnx_export import quantize
    from mlit.inference.onnx_runtime import session

    torch.manual_seed(0)
    model, size, how = build(name)
    backends = {"eager": model}
    if name in MLIT and not quick:
        backends["compile"] = torch.compile(model)
    fp32 = onnx_file(name, model, size, how, folder)
    files = {"onnxruntime fp32": fp32}
    if name in MLIT:
        quantize(fp32, folder / f"{name}.int8.onnx")
        files["onnxruntime int8"] = folder / f"{name}.int8.onnx"
    big = 8 if quick else 64
    runs = (5, 2) if quick else (50, 10)
    rows = []
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        for backend, fn in [*backends.items(), *files.items()]:
            if backend.startswith("onnxruntime"):
                runner = session(fn, threads=n_threads)
                out_name = runner.get_outputs()[0].name

                def call(x, runner=runner, out_name=out_name):
                    return runner.run([out_name], {"images": x.numpy()})
            else:
                def call(x, fn=fn):
                    with torch.no_grad():
                        return fn(x)
            one = torch.randn(1, 3, size, size)
            many = torch.randn(big, 3, size, size)
            lat = timings(lambda: call(one), runs[0], 5)
            thr = timings(lambda: call(many), runs[1], 2)
            rows.append({"model": name, "backend": backend, "threads": n_threads,
                         "input": size, "latency_ms": 1e3 * statistics.median(lat),
                         "latency_p90_ms": 1e3 * sorted(lat)[int(0.9 * (len(lat) - 1))],
                         "batch": big, "images_s": big / statistics.median(thr),
                         "file_mib": (fn.stat().st_size / 2**20 if isinstance(fn, Path)
                                      else None)})
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for row in rows:
        row["peak_rss_mib"] = peak
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


def goals(rows: list[dict], threads: int) -> list[tuple[str, float | None, float]]:
    def get(model, backend, key):
        found = [r[key] for r in rows if r["model"] == model and r["backend"] == backend
                 and r["threads"] == threads]
        return found[0] if found else None

    def ratio(a, b):
        return None if a is None or b is None else a / b

    return [(GOALS[0][0], ratio(get("mlit_xxs", "eager", "latency_ms"),
                               get("mlit_xxs", "onnxruntime fp32", "latency_ms")), GOALS[0][1]),
            (GOALS[1][0], ratio(get("mlit_xxs", "onnxruntime fp32", "images_s"),
                               get("mlit_xxs", "eager", "images_s")), GOALS[1][1]),
            (GOALS[2][0], ratio(get("mlit_xxs", "onnxruntime int8", "images_s"),
                               get("mlit_xxs", "onnxruntime fp32", "images_s")), GOALS[2][1]),
            (GOALS[3][0], ratio(get("mlit_xxs", "onnxruntime fp32", "images_s"),
                               get("mobilevit_xxs", "onnxruntime fp32", "images_s")),
             GOALS[3][1])]


def profile_xxs(folder: Path) -> list[tuple[str, float]]:
    """ONNX Runtime's own profile of mLiT-XXS at batch 1, one thread: time per operator."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling, options.intra_op_num_threads = True, 1
    options.profile_file_prefix = str(folder / "xxs_profile")
    runner = ort.InferenceSession(str(folder / "mlit_xxs.onnx"), options,
                                  providers=["CPUExecutionProvider"])
    x = torch.randn(1, 3, 36, 36).numpy()
    for _ in range(50):
        runner.run(None, {"images": x})
    events = json.loads(Path(runner.end_profiling()).read_text())
    per_op: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and "op_name" in e.get("args", {}):
            per_op[e["args"]["op_name"]] = per_op.get(e["args"]["op_name"], 0) + e["dur"]
    total = sum(per_op.values())
    return [(op, 100 * us / total) for op, us in sorted(per_op.items(), key=lambda kv: -kv[1])]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="XXS and ResNet-56, 1 thread")
    parser.add_argument("--models", help="comma list (default: all there are)")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--json", metavar="PATH", help="also write every figure to PATH")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a child: measure this model
    parser.add_argument("--threads", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        rows = measure(args.one, [int(t) for t in args.threads.split(",")], args.quick,
                       Path(args.folder))
        print(json.dumps(rows))
        if args.profile and args.one == "mlit_xxs":
            print(json.dumps(profile_xxs(Path(args.folder))))
        return 0
    return run_command("bench_infer", lambda: benchmark(args))


def benchmark(args) -> int:
    """Every model in a child process of its own, then the table and the goals; exit 1 when a
    model failed to measure."""
    out = output_file(args.json, "--json") if args.json else None  # before any work
    names = model_list(args.models, args.quick)
    threads = [1] if args.quick else sorted({1, os.cpu_count() or 1})
    failed = []
    print(f"machine: {machine()}")
    print(f"random weights, float32 inputs; batch 1 latency over {5 if args.quick else 50} "
          f"runs, throughput at batch {8 if args.quick else 64}; warm-up excluded\n")
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
    print(f"{'model':<22} {'backend':<17} {'thr':>3} {'in':>4} {'b1 ms':>8} {'b1 p90':>8} "
          f"{'img/s':>9} {'file MiB':>8} {'peak MiB':>8}")
    for r in rows:
        size = f"{r['file_mib']:.2f}" if r["file_mib"] is not None else "-"
        print(f"{r['model']:<22} {r['backend']:<17} {r['threads']:>3} {r['input']:>4} "
              f"{r['latency_ms']:>8.2f} {r['latency_p90_ms']:>8.2f} {r['images_s']:>9.0f} "
              f"{size:>8} {r['peak_rss_mib']:>8.0f}")
    for n_threads in threads:
        print(f"\ngoals, {n_threads} thread{'s' if n_threads > 1 else ''}:")
        for goal, value, target in goals(rows, n_threads):
            verdict = ("not measured" if value is None else
                       "met" if value >= target else "missed")
            shown = "-" if value is None else f"{value:.2f}x"
            print(f"  {goal.format(big=8 if args.quick else 64)}: {shown} (goal {target}x) "
                  f"{verdict}")
    if profile:
        print("\nONNX Runtime profile, mlit_xxs, batch 1, 1 thread (share of operator time):")
        for op, share in profile[:10]:
            print(f"  {op:<24} {share:5.1f}%")
    if out:
        write_json(out, {"machine": machine(), "rows": rows}, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
