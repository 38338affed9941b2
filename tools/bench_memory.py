"""A CPU training step with the memory it frees returned to the system (glibc's default) or
kept for the next step (what mLiT's commands do: mlit.keep_freed_memory), side by side, for
mLiT and its dense ViT: ms a step, page faults and system time a step, and peak resident
memory. Each setting and model runs in a process of its own, one after the other, since the
setting holds for a whole process.

    python tools/bench_memory.py                           # mLiT-XXS's MAE step, batch 1,280
    python tools/bench_memory.py --model mlit_s --batch 840
    python tools/bench_memory.py --step finetune --batch 448

glibc maps each block over 32 MiB afresh and unmaps it when freed; at the paper's batches a
step's activations are such blocks, so with the default every step faults their pages in
again. Linux with glibc only.
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import subprocess
import sys
import time

from mlit.cli import number

MODELS = ("mlit_s", "mlit_xs", "mlit_xxs")  # the CIFAR-sized models, 36x36 inputs
SETTINGS = ("returned", "kept")


def child(model_name: str, ffn: str, step: str, batch: int, warmup: int, steps: int,
          setting: str) -> dict:
    """Time `steps` training steps after `warmup` untimed ones, in this process, as the runner
    steps (bench_train's Stepper, on one batch of random images)."""
    import mlit

    kept = mlit.keep_freed_memory() if setting == "kept" else False
    import torch
    from bench_train import Stepper, training_model

    from mlit.training.engine import select_precision

    torch.manual_seed(0)
    model = training_model(model_name, step, "auto" if ffn == "moe" else "torch", ffn)
    batch_pair = torch.randn(batch, 3, 36, 36), torch.randint(0, 100, (batch,))
    stepper = Stepper(model, itertools.repeat(batch_pair),
                      select_precision(torch.device("cpu"), "fp32"))
    stepper.run(warmup)
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    stepper.run(steps)
    seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    return {"kept": kept, "ms": seconds / steps * 1e3,
            "faults": (after.ru_minflt - before.ru_minflt) / steps,
            "sys_ms": (after.ru_stime - before.ru_stime) / steps * 1e3,
            "peak_mib": after.ru_maxrss / 1024}  # KiB on Linux


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mlit_xxs", choices=MODELS)
    parser.add_argument("--step", default="mae", choices=["mae", "finetune"])
    parser.add_argument("--batch", type=number(int, 1), default=1280, help="images a step")
    # the heap grows for a few steps before a step fits the memory kept from the last (XXS's
    # MAE step at 1,280: 2.1 million, 15,000 and 330,000 page faults, then none)
    parser.add_argument("--warmup", type=number(int, 1), default=3, help="untimed steps first")
    parser.add_argument("--steps", type=number(int, 1), default=2, help="timed steps")
    parser.add_argument("--child", nargs=2, metavar=("FFN", "SETTING"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        ffn, setting = args.child
        print(json.dumps(child(args.model, ffn, args.step, args.batch, args.warmup, args.steps,
                               setting)))
        return 0
    if not sys.platform.startswith("linux"):
        parser.error("the setting it measures is glibc's (Linux)")
    rows = {}
    for ffn, label in (("moe", "mLiT"), ("mlp", "dense ViT")):
        for setting in SETTINGS:
            done = subprocess.run(
                [sys.executable, __file__, "--model", args.model, "--step", args.step,
                 "--batch", str(args.batch), "--warmup", str(args.warmup),
                 "--steps", str(args.steps),
                 "--child", ffn, setting], capture_output=True, text=True)
            if done.returncode:
                print(done.stderr.strip().splitlines()[-1], file=sys.stderr)
                return 1
            rows[label, setting] = json.loads(done.stdout.strip().splitlines()[-1])
    if not rows["mLiT", "kept"]["kept"]:
        print("this C library has no mallopt: the two settings are the same", file=sys.stderr)
    print(f"CPU, fp32, {args.model} {args.step} step, batch {args.batch}, 36x36 images; "
          f"{args.steps} timed steps after {args.warmup}, each row a process of its own")
    print(f"  {'model':<10} {'memory':<9} {'ms/step':>9} {'faults/step':>12} "
          f"{'sys ms/step':>12} {'peak MiB':>9}")
    for (label, setting), r in rows.items():
        print(f"  {label:<10} {setting:<9} {r['ms']:9.1f} {r['faults']:12.0f} "
              f"{r['sys_ms']:12.1f} {r['peak_mib']:9.0f}")
    for label in ("mLiT", "dense ViT"):
        returned, kept = rows[label, "returned"], rows[label, "kept"]
        print(f"  {label}: kept {returned['ms'] / kept['ms']:.2f}x as fast as returned, "
              f"peak memory {kept['peak_mib'] / returned['peak_mib']:.2f}x")
    for setting in SETTINGS:
        ratio = rows["mLiT", setting]["ms"] / rows["dense ViT", setting]["ms"]
        print(f"  memory {setting}: mLiT {ratio:.2f}x the step time of the dense ViT")
    return 0


if __name__ == "__main__":
    sys.exit(main())
