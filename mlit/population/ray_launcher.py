"""Spread a population's runs over a Ray cluster, one GPU per trial (or one CPU where there is none).
Each fine-tune is submitted as soon as its backbone is done."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mlit.errors import BadInput
from mlit.population.plan import PlannedRun
from mlit.population.runner import run_one, runnable


def run_ray(zoo_dir: str | Path, runs: list[PlannedRun], address: str | None = None,
            num_cpus: int | None = None) -> dict[str, list[str]]:
    try:
        import ray
    except ImportError:
        raise BadInput("--launcher ray needs Ray: pip install 'mlit-moe-vision[ray]'") from None
    zoo_dir = Path(zoo_dir).resolve()  # workers start in their own folders
    ray.init(address=address, num_cpus=num_cpus, include_dashboard=False,
             ignore_reinit_error=True, configure_logging=False)
    gpus = 1 if torch.cuda.is_available() else 0

    @ray.remote(num_gpus=gpus, num_cpus=1, max_retries=0)
    def trial(run: PlannedRun) -> str:
        torch.set_num_threads(1)  # one core per trial on a CPU cluster
        return run_one(zoo_dir, run)

    outcome: dict[str, list[str]] = {}
    waiting: dict[str, list[PlannedRun]] = {}
    pending = {}
    for run in runs:
        if runnable(zoo_dir, run):
            pending[trial.remote(run)] = run
        else:
            waiting.setdefault(run.backbone, []).append(run)
    try:
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            run = pending.pop(ref)
            state = ray.get(ref)
            outcome.setdefault(state, []).append(run.path)
            print(json.dumps({"run": run.path, "state": state}), flush=True)
            if state == "done":
                for child in waiting.pop(run.path, []):
                    pending[trial.remote(child)] = child
    finally:
        ray.shutdown()
    for children in waiting.values():  # backbones that failed or are another shard's
        outcome.setdefault("waiting", []).extend(c.path for c in children)
    return outcome
