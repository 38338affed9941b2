"""End-to-end training throughput, side by side in one run: images per second of the MAE
pre-training step and the fine-tuning step, with synthetic CIFAR-shaped data (uint8 32x32,
augmented to 36x36 as in the recipes), and the epoch time that follows for 50,000 images.

    python tools/bench_train.py                    # GPU: mLiT-S/XS/XXS, bf16
    python tools/bench_train.py --quick            # any machine: XXS, small batches
    python tools/bench_train.py --quick --models mlit_xxs,mlit_s --steps 10 --no-compile \
        --variants auto-device,vit-device           # the CPU step against its dense ViT
    ... --quick --batch 256 --steps 3 ...           # the same at a CPU run's batch
    python tools/bench_train.py --quick --variants dense-device-compiled,vit-device-compiled
                                                    # compiled, against the compiled ViT

Variants per model and step (the training code is the runner's own: engine.train_step,
optim.build_optimizer, data.device.DeviceLoader, the torchvision DataLoader; and so is the
process's memory, kept for reuse when freed: mlit.keep_freed_memory):
  input   device (uint8 on the device, batched augmentation) | dataloader (torchvision, workers)
  model   eager | compiled (torch.compile);  moe_impl auto (the default) | torch |
          triton (dense on CPU); a variant that runs another's code is timed once (on CUDA
          auto is triton)
  ref     a dense ViT of the same depth, width and parameter count (model.ffn=mlp)
  optim   the runner's fused AdamW | its per-tensor loop (auto-device-loop: torch's CPU default)
  dropout the model's (its CPU mask drawn fast) | torch's nn.Dropout (-torchdrop variants)
"input ms" is the time to produce one batch alone; "input %" its share of a step. The variants
take turns (--rounds, 3 with --quick) and each reports its median round, so that a busy moment
of the machine does not fall on one variant alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np
import torch

import mlit
from mlit.recipe.schema import Augment, Stage

from bench_train_inputs import MEAN, STD, make_input, sync, time_input

# the data and training layers (torchvision, PIL) load when the benchmark starts, not for --help
MAE_AUG = Augment(crop_scale=(0.2, 1.0), hflip=True)
FT_AUG = Augment(crop_scale=(0.2, 1.0), hflip=True, auto_augment="cifar10")
MAE_BATCH = {"mlit_s": 840, "mlit_xs": 1280, "mlit_xxs": 1280}  # paper Table 3
FT_BATCH = 448  # paper Table 4


class Stepper:
    """One variant's model, optimiser and batches, stepped as the runner steps
    (engine.train_step), so that the variants can take turns (`timed`)."""

    def __init__(self, model, batches, precision, optimizer_loop: bool = False):
        from mlit.training.optim import build_optimizer

        self.model, self.batches, self.precision = model, batches, precision
        self.optimizer = build_optimizer(model, Stage(epochs=1, batch_size=256, base_lr=1e-4))
        if optimizer_loop:  # the same groups, stepped one tensor at a time (torch's CPU default)
            groups = [{**g, "fused": None, "foreach": False} for g in self.optimizer.param_groups]
            self.optimizer = type(self.optimizer)(groups)
        self.scaler = precision.scaler()

    def run(self, steps: int) -> None:
        from mlit.training.engine import train_step

        for _ in range(steps):
            x, y = next(self.batches)
            train_step(self.model, x, y, self.optimizer, self.scaler, self.precision)

    def resident_bytes(self) -> int:
        """What this variant keeps on the device between steps: weights, buffers, gradients
        and the optimiser's state."""
        params = list(self.model.parameters())
        state = [t for s in self.optimizer.state.values() for t in s.values()
                 if torch.is_tensor(t)]
        grads = [p.grad for p in params if p.grad is not None]
        return sum(t.numel() * t.element_size()
                   for t in (*params, *self.model.buffers(), *grads, *state))

    def timed(self, steps: int) -> tuple[float, float]:
        """Seconds a step, and this variant's peak device memory (MiB) in these steps: its
        resident tensors and what the steps allocated above everything resident, so the
        other variants held for their turns are not counted (NaN on the CPU)."""
        device = self.precision.device
        sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            resident = torch.cuda.memory_allocated()
        start = time.perf_counter()
        self.run(steps)
        sync(device)
        seconds = (time.perf_counter() - start) / steps
        peak = ((torch.cuda.max_memory_allocated() - resident + self.resident_bytes()) / 2**20
                if device.type == "cuda" else float("nan"))
        return seconds, peak


def all_variants(fast_impl: str) -> list[tuple]:
    """Every variant the benchmark knows; fast_impl: triton on CUDA, dense on the CPU."""
    # (key, label, input, compiled, moe_impl, ffn, the part left to torch's own default)
    return [
        ("torch-dataloader", "eager torch dataloader", "dataloader", False, "torch", "moe", ""),
        ("auto-device", "eager auto device", "device", False, "auto", "moe", ""),  # default
        ("auto-device-loop", "eager auto device, AdamW loop", "device", False, "auto", "moe",
         "optimizer"),
        ("auto-device-torchdrop", "eager auto device, nn.Dropout", "device", False, "auto",
         "moe", "dropout"),
        ("torch-device", "eager torch device", "device", False, "torch", "moe", ""),
        ("fast-device", f"eager {fast_impl} device", "device", False, fast_impl, "moe", ""),
        ("fast-device-compiled", f"compiled {fast_impl} device", "device", True, fast_impl,
         "moe", ""),
        ("dense-device-compiled", "compiled dense device", "device", True, "dense", "moe", ""),
        ("vit-device", "dense ViT eager device", "device", False, "torch", "mlp", ""),
        ("vit-device-torchdrop", "dense ViT eager device, nn.Dropout", "device", False, "torch",
         "mlp", "dropout"),
        ("vit-device-compiled", "dense ViT compiled device", "device", True, "torch", "mlp", ""),
    ]


def training_model(model_name: str, step: str, moe_impl: str, ffn: str) -> torch.nn.Module:
    """The model a step trains, in training mode: the MAE for "mae", else the classifier."""
    factory = mlit.create_mae if step == "mae" else mlit.create_model
    return factory(model_name, moe_impl=moe_impl, ffn=ffn).train()


def with_torch_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """The model with torch's nn.Dropout (a bernoulli_ mask) in place of mlit's Dropout."""
    from mlit.model.dropout import Dropout

    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, Dropout):
                setattr(module, name, torch.nn.Dropout(child.p))
    return model


def distinct(variants: list[tuple], device_type: str) -> list[tuple]:
    """The variants without those that run another's code (the first kept): on the CPU
    fast-device-compiled and dense-device-compiled are both dense; on CUDA auto-device is the
    Triton kernel, as fast-device is (unless the kernel fails its first-dispatch check, which
    the run then prints: docs/benchmarks.md), and mlit's Dropout is nn.Dropout's F.dropout
    (its own mask is the CPU's alone), so the -torchdrop variants are the plain ones."""
    seen, kept = set(), []
    for v in variants:
        impl, ffn, stock = v[4], v[5], v[6]
        if impl == "auto" and device_type == "cuda":
            impl = "triton"
        if stock == "dropout" and device_type != "cpu":
            stock = ""
        same = (v[2], v[3], impl, ffn, stock)
        if same not in seen:
            seen.add(same)
            kept.append(v)
    return kept


def vit_ratios(times: dict[str, float]) -> list[str]:
    """Each mLiT variant's step time against the dense ViT's in the same mode (eager against
    eager, compiled against compiled) and with the same dropout, for the variants fed on the
    device."""
    lines = []
    for label, t in times.items():
        base, comma, part = label.partition(",")  # "eager auto device", ",", " nn.Dropout"
        mode = base.split()[0]
        vit = times.get(f"dense ViT {mode} device{comma}{part}")
        if vit and base.endswith("device") and not label.startswith("dense ViT"):
            lines.append(f"{label}: {t / vit:.2f}x the step time of the dense ViT ({mode}"
                         f"{comma}{part})")
    return lines


def openmp_idle_policy() -> str:
    """How this process's idle OpenMP threads wait: a tool keeps OpenMP's default, where
    `python -m mlit.train` spins briefly (mlit.SPIN_ROUNDS; docs/benchmarks.md), unless the
    environment says otherwise."""
    setting = [f"{key}={os.environ[key]}" for key in mlit.OPENMP_SETTINGS if key in os.environ]
    return ", ".join(setting) or "OpenMP's default (mlit's commands spin " \
        f"{mlit.SPIN_ROUNDS} rounds: GOMP_SPINCOUNT={mlit.SPIN_ROUNDS})"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help="comma list (default mlit_s,mlit_xs,mlit_xxs; "
                                          "--quick mlit_xxs)")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    parser.add_argument("--steps", type=int, help="timed steps (default 20; --quick 3)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, help="the variants take turns, each timing "
                        "--steps steps a round; the median round counts, so that the machine's "
                        "drift falls on every variant alike (default 1; --quick 3)")
    parser.add_argument("--workers", type=int, default=8, help="DataLoader workers")
    parser.add_argument("--quick", action="store_true",
                        help="XXS unless --models, batch 32, 3 steps unless --steps")
    parser.add_argument("--batch", type=int, help="images a step (default: the paper's, "
                                                   "Tables 3-4; --quick 32)")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--variants", help="comma list of variant keys (default: all), e.g. "
                                           "fast-device,fast-device-compiled")
    parser.add_argument("--json", metavar="PATH", help="also write every figure to PATH")
    args = parser.parse_args(argv)
    for flag in ("batch", "rounds"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            parser.error(f"--{flag} {getattr(args, flag)}: must be at least 1")
    rounds = args.rounds or (3 if args.quick else 1)
    models = (args.models or ("mlit_xxs" if args.quick else "mlit_s,mlit_xs,mlit_xxs")).split(",")
    if unknown := [m for m in models if m not in MAE_BATCH]:  # mlit_tiny, _micro: 12x12 images
        parser.error(f"--models {','.join(unknown)}: this benchmark times the CIFAR-sized "
                     f"models ({', '.join(MAE_BATCH)})")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    fast_impl = "triton" if device.type == "cuda" else "dense"
    variants = all_variants(fast_impl)
    if args.variants:  # checked before any work, so that a typo is the run's only line
        keys = args.variants.split(",")
        unknown = sorted(set(keys) - {v[0] for v in variants})
        if unknown:
            parser.error(f"--variants: unknown {', '.join(unknown)}; choose from "
                         f"{', '.join(v[0] for v in variants)}")
        variants = [v for v in variants if v[0] in keys]
    mlit.keep_freed_memory()  # as a command does (docs/benchmarks.md)
    from mlit.data.catalogue import INFO
    from mlit.training.engine import select_precision

    assert (MEAN, STD) == (INFO["cifar100"].mean, INFO["cifar100"].std)
    records: list[dict] = []

    amp = args.dtype if device.type == "cuda" else "fp32"
    precision = select_precision(device, amp)
    steps = args.steps or (3 if args.quick else 20)
    warmup = 1 if args.quick else args.warmup
    workers = min(args.workers, 2) if args.quick else args.workers
    torch._dynamo.config.recompile_limit = 64

    rng = np.random.default_rng(0)
    n_images = 4096 if args.quick else 50_000
    images = rng.integers(0, 256, (n_images, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 100, n_images).astype(np.int64)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"device: {name}; torch {torch.__version__}; dtype {precision.dtype}; "
          f"images 32x32 uint8 -> 36x36 (3x3 patches, 145 tokens; MAE encoder 37); the "
          f"variants in turn, {rounds} round(s) of {steps} steps after {warmup}, the median round")
    if device.type == "cpu":
        print(f"{torch.get_num_threads()} threads; idle OpenMP threads: {openmp_idle_policy()}")
    if args.no_compile:
        variants = [v for v in variants if not v[3]]
    variants = [v[1:] for v in distinct(variants, device.type)]
    for model_name in models:
        for step in ("mae", "finetune"):
            batch = MAE_BATCH[model_name] if step == "mae" else FT_BATCH
            batch = args.batch or (32 if args.quick else batch)
            aug = MAE_AUG if step == "mae" else FT_AUG
            print(f"\n{model_name} {step} step, batch {batch}")
            print(f"  {'variant':<36} {'ms/step':>9} {'img/s':>9} {'epoch 50k':>10} "
                  f"{'input ms':>9} {'input %':>8} {'vs first':>8} {'peak MiB':>9}")
            inputs, steppers = {}, {}
            for label, input_kind, compiled, impl, ffn, stock in variants:
                torch.manual_seed(0)
                model = training_model(model_name, step, impl, ffn).to(device)
                if stock == "dropout":
                    model = with_torch_dropout(model)
                if compiled:
                    model = torch.compile(model)
                if input_kind not in inputs:
                    inputs[input_kind] = make_input(input_kind, images, labels, batch, aug,
                                                    device, workers)
                    inputs[input_kind + "_ms"] = time_input(inputs[input_kind], device, steps)
                steppers[label] = Stepper(model, inputs[input_kind], precision,
                                          optimizer_loop=stock == "optimizer")
                steppers[label].run(warmup)
            rounds_of = {label: [] for label in steppers}
            for _ in range(rounds):
                for label, stepper in steppers.items():
                    rounds_of[label].append(stepper.timed(steps))
            first, times = None, {}
            for label, input_kind, *_ in variants:
                t = statistics.median(seconds for seconds, _ in rounds_of[label])
                peak = max(peak for _, peak in rounds_of[label])
                first, times[label] = first or t, t
                in_ms = inputs[input_kind + "_ms"]
                records.append({"model": model_name, "step": step, "batch": batch,
                                "variant": label, "ms_per_step": t * 1e3, "img_s": batch / t,
                                "epoch_50k_s": 50_000 / batch * t, "input_ms": in_ms * 1e3,
                                "input_pct": 100 * in_ms / t,
                                "peak_mib": None if peak != peak else peak})
                print(f"  {label:<36} {t * 1e3:>9.2f} {batch / t:>9.0f} "
                      f"{50_000 / batch * t:>9.1f}s {in_ms * 1e3:>9.2f} "
                      f"{100 * in_ms / t:>7.1f}% {first / t:>7.2f}x {peak:>9.1f}", flush=True)
            for line in vit_ratios(times):
                print(f"  {line}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "torch": torch.__version__,
                       "dtype": str(precision.dtype).removeprefix("torch."), "rows": records},
                      f, indent=1)


if __name__ == "__main__":
    main()
