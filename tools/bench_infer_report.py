"""tools/bench_infer.py's table, its goals and ONNX Runtime's profile of mLiT-XXS.

The goals, per mLiT model and thread count (docs/deploy.md): ONNX Runtime fp32 at batch 64 at
70% of the machine's measured peak or more, at least 2x eager at batch 1 and 1.5x at batch 64,
ahead of the dense ViT of its shape per parameter; int8 faster than fp32 (its place in the
export); mLiT-XXS ahead of mobilevit_xxs. A goal not measured says so.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench_infer_models import DENSE, MLIT

FP32, INT8 = "onnxruntime fp32", "onnxruntime int8"


def print_table(rows: list[dict]) -> None:
    print(f"{'model':<22} {'backend':<17} {'thr':>3} {'in':>4} {'b1 ms':>7} {'b1 p90':>7} "
          f"{'img/s':>7} {'GFLOP/s':>7} {'peak %':>6} {'prod %':>6} {'MiB':>6} {'RSS':>5}")
    for r in rows:
        size = f"{r['file_mib']:.2f}" if r["file_mib"] is not None else "-"
        products = f"{100 * r['products_fraction']:.0f}" if r["products_fraction"] else "-"
        print(f"{r['model']:<22} {r['backend']:<17} {r['threads']:>3} {r['input']:>4} "
              f"{r['latency_ms']:>7.2f} {r['latency_p90_ms']:>7.2f} {r['images_s']:>7.0f} "
              f"{r['gflops']:>7.1f} {100 * r['peak_fraction']:>6.1f} {products:>6} {size:>6} "
              f"{r['peak_rss_mib']:>5.0f}")
    print("\nGFLOP/s: images/s x the model's forward FLOPs (the sparse path for mLiT); peak %: "
          "of the machine's peak below; prod %: of the model's own matrix products run alone")
    print("peak (each model's process, at each thread count: a 1024^3 fp32 product, the "
          "better library) and the model's own matrix products alone:")
    for r in rows:
        if r["backend"] != "eager":
            continue
        probe = ", ".join(f"{k} {v:.0f}" for k, v in r["peak_probe_gflops"].items())
        products = (f"; its products alone at batch {r['products_batch']} (the graph's chunk) "
                    f"{r['products_gflops']:.0f}" if r["products_gflops"] else "")
        print(f"  {r['model']}, {r['threads']} thread(s): peak {r['peak_gflops']:.0f} GFLOP/s "
              f"({probe}){products}")


def goals(rows: list[dict], threads: int, big: int) -> list[tuple[str, float | None, float, str]]:
    """(goal, value, target, unit) per mLiT model measured, at this thread count."""
    def get(model, backend, key):
        found = [r[key] for r in rows if r["model"] == model and r["backend"] == backend
                 and r["threads"] == threads]
        return found[0] if found else None

    def ratio(a, b):
        return None if a is None or b is None else a / b

    found = []
    dense_of = {m: d for d, m in DENSE.items()}
    for m in MLIT:
        if get(m, FP32, "images_s") is None:
            continue
        dense = dense_of[m]
        per_param = (None if get(dense, FP32, "images_s") is None else
                     ratio(get(m, FP32, "images_s") * get(m, FP32, "params"),
                           get(dense, FP32, "images_s") * get(dense, FP32, "params")))
        found += [
            (f"{m} ONNX Runtime fp32, batch {big}: share of the peak", get(m, FP32,
                                                                          "peak_fraction"),
             0.70, "%"),
            (f"{m} ONNX Runtime fp32 vs eager, batch 1 latency",
             ratio(get(m, "eager", "latency_ms"), get(m, FP32, "latency_ms")), 2.0, "x"),
            (f"{m} ONNX Runtime fp32 vs eager, batch {big} images/s",
             ratio(get(m, FP32, "images_s"), get(m, "eager", "images_s")), 1.5, "x"),
            (f"{m} vs {dense} (ONNX Runtime fp32 each), batch {big} images/s x parameters",
             per_param, 1.0, "x"),
            (f"{m} ONNX Runtime int8 vs fp32, batch {big} images/s",
             ratio(get(m, INT8, "images_s"), get(m, FP32, "images_s")), 1.0, "x")]
    if get("mlit_xxs", FP32, "images_s") is not None:
        found.append((f"mlit_xxs vs mobilevit_xxs (ONNX Runtime each), batch {big} images/s",
                      ratio(get("mlit_xxs", FP32, "images_s"),
                            get("mobilevit_xxs", FP32, "images_s")), 1.0, "x"))
    return found


def print_goals(rows: list[dict], threads: list[int], big: int) -> None:
    for n_threads in threads:
        print(f"\ngoals, {n_threads} thread{'s' if n_threads > 1 else ''}:")
        for goal, value, target, unit in goals(rows, n_threads, big):
            verdict = "not measured" if value is None else "met" if value >= target else "missed"
            if unit == "%":
                shown = "-" if value is None else f"{100 * value:.1f}%"
                wanted = f"{100 * target:.0f}%"
            else:
                shown, wanted = ("-" if value is None else f"{value:.2f}x"), f"{target}x"
            print(f"  {goal}: {shown} (goal {wanted}) {verdict}")


def profile_xxs(folder: Path, batch: int) -> list[tuple[str, float]]:
    """ONNX Runtime's own profile of mLiT-XXS's file at `batch`, one thread: the share of
    operator time per operator type."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling, options.intra_op_num_threads = True, 1
    options.profile_file_prefix = str(folder / f"xxs_profile_{batch}")
    runner = ort.InferenceSession(str(folder / "mlit_xxs.onnx"), options,
                                  providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((batch, 3, 36, 36), dtype=np.float32)
    for _ in range(50 if batch == 1 else 5):
        runner.run(None, {"images": x})
    events = json.loads(Path(runner.end_profiling()).read_text())
    per_op: dict[str, float] = {}
    for e in events:
        # a Scan's or an If's time is its subgraph's nodes', which are reported themselves
        if e.get("cat") == "Node" and e.get("args", {}).get("op_name") not in (None, "If",
                                                                                 "Scan"):
            per_op[e["args"]["op_name"]] = per_op.get(e["args"]["op_name"], 0) + e["dur"]
    total = sum(per_op.values())
    return [(op, 100 * us / total) for op, us in sorted(per_op.items(), key=lambda kv: -kv[1])]


def print_profile(profile: dict) -> None:
    for batch, ops in profile.items():
        print(f"\nONNX Runtime profile, mlit_xxs, batch {batch}, 1 thread (share of operator "
              "time): " + ", ".join(f"{op} {share:.1f}%" for op, share in ops[:10]))
