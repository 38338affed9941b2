"""The training parts of tools/gpu_check.py: the main command under each precision, watched
for recompilations, CUDA-graph skips and host synchronisations; which attention kernel runs;
and the costliest kernels of one step.

The runs are `mlit.train.main` on recipes/mmlit_s.yaml, the code a user runs, on CIFAR-100
files that mlit.data.synthetic writes in the real on-disk format.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import warnings
from pathlib import Path

import torch
from torch._dynamo.utils import counters

import mlit

from gpu_check_common import Part, device, dtype_name

# (label, overrides): the paper's fp16 with a gradient scaler, bf16, bf16 compiled + CUDA graphs
VARIANTS = [("fp16", ["train.amp=fp16"]), ("bf16", ["train.amp=bf16"]),
            ("bf16 compiled, reduce-overhead", ["train.amp=bf16", "train.compile=true",
                                                "train.compile_mode=reduce-overhead"])]
SMOKE_VARIANTS = [("fp32", ["train.amp=fp32"])]
# 8,400 images: 10 MAE steps an epoch at the paper's batch 840, 18 fine-tuning steps at 448
GPU_RUN = dict(n_train=8400, n_test=1000, classes=100, overrides=[
    "pretrain.epochs=10", "pretrain.warmup_epochs=1", "pretrain.eval_every=10",
    "pretrain.checkpoint_every=10", "finetune.epochs=6", "finetune.warmup_epochs=1",
    "finetune.checkpoint_every=6", "data.num_workers=4", "train.log_every=25"])
SMOKE_RUN = dict(n_train=256, n_test=64, classes=10, overrides=[
    "model.name=mlit_micro", "pretrain.epochs=3", "pretrain.warmup_epochs=0",
    "pretrain.batch_size=32", "pretrain.base_lr=2e-3", "pretrain.eval_every=3",
    "finetune.epochs=3", "finetune.warmup_epochs=0", "finetune.batch_size=32",
    "finetune.base_lr=1e-2", "finetune.augment.auto_augment=null", "data.num_workers=0",
    "train.threads=2", "train.log_every=3"])


class StepLoopProbe:
    """Counts, from each stage's second epoch on (after warm-up and compilation): graphs
    compiled (a recompilation) and, on CUDA, host synchronisations inside the step loop,
    leaving out the log points (StepTracker.check and means, StageRun.log_step), where the
    runner reads values back on purpose."""

    def __init__(self):
        self.graphs_after_warmup = 0
        self.syncs: list[str] = []
        self.counting = False

    @contextlib.contextmanager
    def installed(self):
        from mlit.training.engine import StepTracker
        from mlit.training.stage import StageRun

        probe, cuda = self, torch.cuda.is_available()
        run_epoch, check, means, log_step = (StageRun.run_epoch, StepTracker.check,
                                             StepTracker.means, StageRun.log_step)

        def counted_epoch(stage, bar):
            warm = stage.epoch >= 1
            graphs = counters["stats"]["unique_graphs"]
            probe.set_counting(warm and cuda)
            try:
                return run_epoch(stage, bar)
            finally:
                probe.set_counting(False)
                if warm:
                    probe.graphs_after_warmup += counters["stats"]["unique_graphs"] - graphs

        def paused(fn):
            def inner(*args, **kwargs):
                was = probe.counting
                probe.set_counting(False)
                try:
                    return fn(*args, **kwargs)
                finally:
                    probe.set_counting(was)
            return inner

        StageRun.run_epoch, StageRun.log_step = counted_epoch, paused(log_step)
        StepTracker.check, StepTracker.means = paused(check), paused(means)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                yield self
            finally:
                StageRun.run_epoch, StageRun.log_step = run_epoch, log_step
                StepTracker.check, StepTracker.means = check, means
                self.set_counting(False)
        self.syncs = [f"{Path(w.filename).name}:{w.lineno}" for w in caught
                      if "synchroniz" in str(w.message)]

    def set_counting(self, on: bool) -> None:
        self.counting = on
        if torch.cuda.is_available():
            torch.cuda.set_sync_debug_mode("warn" if on else 0)


def train_variants(part: Part, smoke: bool, out: Path) -> None:
    from mlit.data.synthetic import write_cifar100
    from mlit.files.jsonl import read_jsonl
    from mlit.train import main

    run = SMOKE_RUN if smoke else GPU_RUN
    data = out / "train_data"
    shutil.rmtree(data, ignore_errors=True)  # written anew: a few seconds
    write_cifar100(data, run["n_train"], run["n_test"], learnable=True, classes=run["classes"])
    rows = []
    for label, overrides in SMOKE_VARIANTS if smoke else VARIANTS:
        torch._dynamo.reset()
        counters.clear()
        folder = out / "train_runs" / label.split(",")[0].replace(" ", "_")
        argv = ["recipes/mmlit_s.yaml", f"data.root={data}", f"train.out={folder}",
                "train.progress=false", "train.resume=false", *run["overrides"], *overrides]
        probe = StepLoopProbe()
        print(f"$ python -m mlit.train {' '.join(argv)}", flush=True)
        with probe.installed():
            code = main(argv)
        part.check(f"{label}: exit status 0", code == 0, f"exit status {code}")
        records = read_jsonl(folder / "metrics.jsonl")
        for stage in ("pretrain", "finetune"):
            losses = [r["train_loss"] for r in records if r["stage"] == stage]
            finite = bool(losses) and all(math.isfinite(v) for v in losses)
            falling = finite and losses[-1] < losses[0]
            part.check(f"{label}: {stage} loss finite and falling", falling,
                       " -> ".join(f"{v:.4f}" for v in losses[:1] + losses[-1:]))
            rows.append([label, stage, len(losses),
                         " -> ".join(f"{v:.4f}" for v in losses[:1] + losses[-1:]),
                         next((f"{r['test_acc']:.4f}" for r in reversed(records)
                               if r["stage"] == stage and "test_acc" in r), "-")])
        skips = counters["inductor"].get("cudagraph_skips", 0)
        part.check(f"{label}: no recompilation after warm-up", probe.graphs_after_warmup == 0,
                   f"{probe.graphs_after_warmup} graphs compiled after the first epoch")
        part.check(f"{label}: no CUDA-graph skips", skips == 0, f"{skips} skips")
        syncs = sorted(set(probe.syncs))
        part.check(f"{label}: no host sync between log points", not probe.syncs,
                   f"{len(probe.syncs)} at {', '.join(syncs[:5])}" if probe.syncs else
                   ("none" if torch.cuda.is_available() else "not measured on the CPU"))
        part.figures[label] = {"graphs_after_warmup": probe.graphs_after_warmup,
                               "cudagraph_skips": skips, "host_syncs": len(probe.syncs),
                               "sync_sites": syncs}
    part.markdown += [f"`python -m mlit.train recipes/mmlit_s.yaml` on generated CIFAR-100 "
                      f"files ({run['n_train']} training images), with "
                      f"`{' '.join(run['overrides'])}` and per variant:", ""]
    part.table(["variant", "stage", "epochs", "train loss first -> last", "test acc"], rows)
    part.table(["variant", "graphs compiled after warm-up", "CUDA-graph skips",
                "host syncs between log points"],
               [[k, v["graphs_after_warmup"], v["cudagraph_skips"],
                 v["host_syncs"] if torch.cuda.is_available() else "n/a (CPU)"]
                for k, v in part.figures.items()])


# -- attention --------------------------------------------------------------------------------
def attention_kernels(part: Part, smoke: bool) -> None:
    """Which kernel scaled_dot_product_attention runs for each head dimension of the models
    (forward and backward, in the training dtype), read off the profiler."""
    from mlit.model.attention import GroupedQueryAttention

    dev = device()
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    layers = {}
    for name in ("mlit_s", "mlit_xs", "mlit_xxs"):
        cfg = mlit.model_config(name)
        layers[f"{name} encoder"] = (cfg.embed_dim, cfg.num_heads, cfg.num_kv_groups)
    cfg = mlit.model_config("mlit_s")
    layers["decoder"] = (cfg.decoder_embed_dim, cfg.decoder_num_heads, cfg.decoder_num_kv_groups)
    rows = []
    for label, (dim, heads, groups) in layers.items():
        layer = GroupedQueryAttention(dim, heads, groups).to(dev)
        x = torch.randn(8 if smoke else 64, 145, dim, device=dev, requires_grad=True)
        names = profiled_names(lambda: attention_step(layer, x, dtype), dev)
        backend = attention_backend(names)
        rows.append([label, dim // heads, f"{heads}/{groups}", backend,
                     ", ".join(sorted({n for n in names if is_attention(n)})[:3]) or "-"])
        part.figures.setdefault("attention", {})[label] = {"head_dim": dim // heads,
                                                           "backend": backend}
    part.markdown += [f"Attention kernels ({dev}, {dtype_name(dtype)}, 145 tokens):", ""]
    part.table(["layer", "head dim", "heads/kv groups", "backend", "kernels"], rows)


def attention_step(layer, x, dtype):
    with torch.autocast(x.device.type, dtype=dtype, enabled=dtype != torch.float32):
        layer(x).float().sum().backward()


def profiled(fn, dev: torch.device):
    """The profiler's record of one call of fn (CPU operators, and CUDA kernels on a GPU)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda"
                                           else [])
    with profile(activities=activities) as prof:
        fn()
        if dev.type == "cuda":
            torch.cuda.synchronize()
    return prof


def profiled_names(fn, dev: torch.device) -> list[str]:
    fn()  # warm-up
    prof = profiled(fn, dev)
    kind = torch.autograd.DeviceType.CUDA if dev.type == "cuda" else torch.autograd.DeviceType.CPU
    return [e.name for e in prof.events() if e.device_type == kind]


def is_attention(name: str) -> bool:
    low = name.lower()
    return any(k in low for k in ("flash", "fmha", "attention", "attn", "sdpa"))


def attention_backend(names: list[str]) -> str:
    low = " ".join(names).lower()
    if "cudnn" in low and any(k in low for k in ("sdpa", "fmha", "attention")):
        return "cuDNN attention"
    if "flash" in low:
        return "flash attention"
    if "efficient" in low or "fmha" in low:
        return "memory-efficient attention"
    return "math (matmul + softmax)"


# -- profile ----------------------------------------------------------------------------------
def profile_steps(part: Part, smoke: bool, out: Path) -> None:
    """The ten costliest kernels of one compiled mmLiT-S MAE step and one fine-tuning step
    (smoke: mLiT-micro, eager, CPU operators)."""
    from mlit.recipe.schema import Stage
    from mlit.training.engine import select_precision, train_step
    from mlit.training.optim import build_optimizer

    dev = device()
    precision = select_precision(dev, "bf16" if dev.type == "cuda" else "fp32")
    name = "mlit_micro" if smoke else "mlit_s"
    for step, batch in (("mae", 32 if smoke else 840), ("finetune", 32 if smoke else 448)):
        torch.manual_seed(0)
        model = (mlit.create_mae(name) if step == "mae" else mlit.create_model(name))
        model = model.to(dev).train()
        size = model.cfg.image_size
        runner = model if smoke else torch.compile(model)
        optimizer = build_optimizer(model, Stage(epochs=1, batch_size=batch, base_lr=1e-4))
        scaler = precision.scaler()
        x = torch.randn(batch, 3, size, size, device=dev)
        y = torch.randint(0, model.cfg.num_classes, (batch,), device=dev)

        def one_step():
            train_step(runner, x, y, optimizer, scaler, precision)

        for _ in range(3):  # warm-up and compilation
            one_step()
        rows, total = top_kernels(profiled(one_step, dev), dev, 10)
        part.markdown += [f"{name} {step} step, batch {batch}, {dtype_name(precision.dtype)}"
                          f"{'' if smoke else ', compiled'}: {total:.2f} ms of "
                          f"{'GPU kernels' if dev.type == 'cuda' else 'CPU operators'}", ""]
        part.table(["kernel", "ms", "share", "calls"], rows)
        part.figures[step] = {"total_ms": total, "top": rows}
        part.check(f"{step} step profiled", bool(rows), f"{len(rows)} kernels")


def top_kernels(prof, dev: torch.device, n: int) -> tuple[list[list], float]:
    """(name, ms, share, calls) of the n kernels with the most self time on the device."""
    on_gpu = dev.type == "cuda"
    totals: dict[str, list] = {}
    for e in prof.events():
        if on_gpu and e.device_type != torch.autograd.DeviceType.CUDA:
            continue
        us = e.device_time if on_gpu else e.self_cpu_time_total
        entry = totals.setdefault(e.name, [0.0, 0])
        entry[0] += us
        entry[1] += 1
    total = sum(v[0] for v in totals.values()) / 1e3
    ranked = sorted(totals.items(), key=lambda kv: -kv[1][0])[:n]
    return [[k[:90], f"{v[0] / 1e3:.3f}", f"{100 * v[0] / 1e3 / max(total, 1e-9):.1f}%", v[1]]
            for k, v in ranked], total
