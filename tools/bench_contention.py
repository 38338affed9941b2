"""A training command alone and beside another torch process, side by side in one run: the
quickstart (cut to --epochs of pre-training and of fine-tuning) timed as `python -m
mlit.train` runs it (idle OpenMP threads spin briefly, then sleep: GOMP_SPINCOUNT, set in
mlit/__init__.py) and with OpenMP's default (the same run started through runpy, which
leaves OpenMP alone), each alone (the best of --repeat runs) and beside a second process
that multiplies small matrices on every core for as long as the run lasts (a second
experiment, a zoo worker, a CI job).

    python tools/bench_contention.py [--epochs 2] [--threads 2]
    python tools/bench_contention.py --model mlit_s   # CIFAR-sized training steps instead
    python tools/bench_contention.py --spin 8000      # another spin count in mlit's row

With --model, each run is tools/bench_train.py's CPU training steps of that model (MAE
pre-training and fine-tuning, batches of 32, eager, its median round), the policy set as
the command sets it (GOMP_SPINCOUNT), since a quickstart on small images runs few operations
large enough for both threads, and a CIFAR-sized step runs many.

Goals (docs/benchmarks.md): beside the other process at most 2x the time alone; alone at
most 1.05x OpenMP's default's time alone.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlit import OPENMP_SETTINGS, SPIN_ROUNDS

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


def step_argv(model: str, json_path: Path) -> list[str]:
    """bench_train's eager CPU steps of `model` (MAE and fine-tuning), written to json_path."""
    return [sys.executable, str(ROOT / "tools" / "bench_train.py"), "--quick", "--models",
            model, "--variants", "auto-device", "--no-compile", "--rounds", "2", "--json",
            str(json_path)]


def policy_env(policy: str, spin: str) -> dict[str, str]:
    """The environment of a run under `policy`: OpenMP's default (no setting) or `spin`
    rounds (what mlit's commands set, mlit.SPIN_ROUNDS, unless --spin says another)."""
    return {"GOMP_SPINCOUNT": spin} if policy == "mlit" else {}


def step_times(json_path: Path) -> dict[str, float]:
    """ms a step of each step kind (mae, finetune) in a bench_train --json file."""
    rows = json.loads(json_path.read_text())["rows"]
    return {row["step"]: row["ms_per_step"] for row in rows}


def timed_run(argv: list[str], beside: bool, threads: int, extra_env: dict | None = None
              ) -> float:
    # the other process keeps OpenMP's default, whatever the run's policy
    env = {k: v for k, v in os.environ.items() if k not in OPENMP_SETTINGS}
    other = subprocess.Popen([sys.executable, "-c", OTHER.format(threads=threads)], env=env) \
        if beside else None
    env = {**env, **(extra_env or {})}
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
    parser.add_argument("--epochs", type=int, default=2,
                        help="of each stage of the quickstart (default 2)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="of the run and of the other process (default: every core)")
    parser.add_argument("--repeat", type=int, default=2, help="runs alone (best kept)")
    parser.add_argument("--spin", type=int, default=int(SPIN_ROUNDS),
                        help=f"rounds idle threads spin in the second row (default mlit's "
                             f"commands': {SPIN_ROUNDS})")
    parser.add_argument("--model", choices=("mlit_s", "mlit_xs", "mlit_xxs"),
                        help="time this model's CIFAR-sized training steps (tools/bench_train.py "
                             "--quick) instead of the quickstart")
    args = parser.parse_args(argv)
    for flag in ("epochs", "threads", "repeat", "spin"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} {getattr(args, flag)}: must be at least 1")
    times: dict[tuple[str, bool], dict[str, float]] = {}
    runs = itertools.count()

    def run(policy: str, beside: bool, tmp: Path) -> None:
        """One run of the workload under `policy`; its figures, the best of those alone."""
        out = tmp / f"{policy}_{next(runs)}"  # a fresh run folder (or json file) each time
        env = policy_env(policy, str(args.spin))
        if args.model:
            env["OMP_NUM_THREADS"] = str(args.threads)
            timed_run(step_argv(args.model, out.with_suffix(".json")), beside, args.threads, env)
            figures = {f"{step} step ms": ms for step, ms in
                       step_times(out.with_suffix(".json")).items()}
        else:
            seconds = timed_run(train_argv(policy, out, args.epochs, args.threads), beside,
                                args.threads, env)
            figures = {"quickstart s": seconds}
        best = times.setdefault((policy, beside), figures)
        for name, value in figures.items():
            best[name] = min(best[name], value)

    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeat):  # the policies in turn, so a busy moment hurts both
            for policy in ("default", "mlit"):
                run(policy, False, Path(tmp))
        for policy in ("default", "mlit"):
            run(policy, True, Path(tmp))
    workload = (f"{args.model}'s eager training steps (tools/bench_train.py --quick: batch 32, "
                f"the median of 2 rounds)" if args.model else
                f"the quickstart cut to {args.epochs} + {args.epochs} epochs")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; {workload} on "
          f"{args.threads} thread(s), fp32; the other process: 96x96 products on "
          f"{args.threads} thread(s)")
    print(f"{'idle OpenMP threads':38s} {'figure':18s} {'alone':>9s} {'beside':>9s} "
          f"{'beside/alone':>13s}")
    short = f"mlit's commands ({args.spin} spins)" if str(args.spin) == SPIN_ROUNDS \
        else f"{args.spin} spins"
    for policy, label in (("default", "OpenMP's default (GNU: 300,000 spins)"),
                          ("mlit", short)):
        for name, alone in times[policy, False].items():
            beside = times[policy, True][name]
            print(f"{label:38s} {name:18s} {alone:9.1f} {beside:9.1f} {beside / alone:12.2f}x")
    for name, alone in times["mlit", False].items():
        print(f"{name}, {short}: alone / the default's alone "
              f"{alone / times['default', False][name]:.2f}x (goal <= 1.05); beside / alone "
              f"{times['mlit', True][name] / alone:.2f}x (goal <= 2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
