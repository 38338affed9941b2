"""A training command alone and beside another torch process, side by side in one run: the
quickstart (cut to --epochs of pre-training and of fine-tuning) timed as `python -m
mlit.train` runs it (idle OpenMP threads spin briefly, then sleep: GOMP_SPINCOUNT, set in
mlit/__init__.py) and with OpenMP's default (the same run started through runpy, which
leaves OpenMP alone), each alone (the best of --repeat runs) and beside a second process
that multiplies small matrices on every core for as long as the run lasts (a second
experiment, a zoo worker, a CI job).

    python tools/bench_contention.py [--epochs 2] [--threads 2]

Goals (docs/benchmarks.md): beside the other process at most 2x the time alone; alone at
most 1.05x OpenMP's default's time alone.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OTHER = """
import torch
torch.set_num_threads({threads})
a = torch.randn(96, 96)
while True:
    for _ in range(200):
        a = torch.tanh(a @ a)
"""
DEFAULT_POLICY = ("import runpy, sys; sys.argv = ['mlit.train', *sys.argv[1:]]; "
                  "runpy.run_module('mlit.train', run_name='__main__')")


def train_argv(policy: str, out: Path, epochs: int, threads: int) -> list[str]:
    overrides = [f"train.out={out}", f"pretrain.epochs={epochs}", f"finetune.epochs={epochs}",
                 "train.progress=false", f"train.threads={threads}"]
    recipe = str(ROOT / "recipes" / "quickstart.yaml")
    if policy == "mlit":
        return [sys.executable, "-m", "mlit.train", recipe, *overrides]
    return [sys.executable, "-c", DEFAULT_POLICY, recipe, *overrides]


def timed_run(argv: list[str], beside: bool, threads: int) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    other = subprocess.Popen([sys.executable, "-c", OTHER.format(threads=threads)], env=env) \
        if beside else None
    try:
        if other is not None:
            time.sleep(2)  # the other process is multiplying before the run starts
        start = time.perf_counter()
        done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
        seconds = time.perf_counter() - start
    finally:
        if other is not None:
            other.kill()
            other.wait()
    if done.returncode != 0:
        raise SystemExit(f"bench_contention: the run failed: {done.stderr.strip()[-300:]}")
    return seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=2, help="of each stage (default 2)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="of the run and of the other process (default: every core)")
    parser.add_argument("--repeat", type=int, default=2, help="runs alone (best kept)")
    args = parser.parse_args(argv)
    for flag in ("epochs", "threads", "repeat"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} {getattr(args, flag)}: must be at least 1")
    times = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeat):  # the policies in turn, so a busy moment hurts both
            for policy in ("default", "mlit"):
                out = Path(tmp) / f"{policy}_{i}"
                seconds = timed_run(train_argv(policy, out, args.epochs, args.threads), False,
                                    args.threads)
                times[policy, False] = min(times.get((policy, False), seconds), seconds)
        for policy in ("default", "mlit"):
            out = Path(tmp) / f"{policy}_beside"
            times[policy, True] = timed_run(train_argv(policy, out, args.epochs, args.threads),
                                            True, args.threads)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; the "
          f"quickstart cut to {args.epochs} + {args.epochs} epochs on {args.threads} thread(s), "
          f"fp32; the other process: 96x96 products on {args.threads} thread(s)")
    from mlit import SPIN_ROUNDS

    print(f"{'idle OpenMP threads':36s} {'alone s':>8s} {'beside s':>9s} {'beside/alone':>13s}")
    for policy, label in (("default", "OpenMP's default (GNU: 300,000 spins)"),
                          ("mlit", f"mlit's commands ({SPIN_ROUNDS} spins)")):
        alone, beside = times[policy, False], times[policy, True]
        print(f"{label:36s} {alone:8.1f} {beside:9.1f} {beside / alone:12.2f}x")
    print(f"mlit's alone / the default's alone: "
          f"{times['mlit', False] / times['default', False]:.2f}x (goal <= 1.05); "
          f"mlit's beside / alone: {times['mlit', True] / times['mlit', False]:.2f}x "
          "(goal <= 2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
