"""Train a population's runs where the command line says (`--launcher local` or `ray`,
mlit.cli.launcher_flags) and end the way the zoo and the shape sweep end: a line per state,
and the exit status of the whole.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mlit.errors import FAULT, WORK_LEFT
from mlit.population.plan import PlannedRun
from mlit.population.runner import run_local


def train_all(folder: Path, runs: list[PlannedRun], args, prog: str) -> int:
    """Train the runs one by one (`--launcher local`) or on Ray (mlit.cli.launcher_flags),
    print the outcome, and return the exit status: 1 if one failed, 3 (WORK_LEFT) if some are
    left for another run (waiting for a backbone, or held by another runner), else 0."""
    if args.launcher == "ray":
        from mlit.population.ray_launcher import run_ray  # imports Ray: only when asked

        outcome = run_ray(folder, runs, args.ray_address, args.ray_cpus)
    else:
        outcome = run_local(folder, runs)
    print(json.dumps({k: len(v) for k, v in outcome.items()}), file=sys.stderr)
    if outcome.get("busy"):
        print(f"{prog}: {len(outcome['busy'])} models are being trained by another runner; "
              "skipped them", file=sys.stderr)
    if outcome.get("waiting"):
        print(f"{prog}: {len(outcome['waiting'])} fine-tunes wait for backbones that are "
              "not done (another shard's, or failed); run again once they are",
              file=sys.stderr)
    if outcome.get("failed"):
        return FAULT
    return WORK_LEFT if outcome.get("waiting") or outcome.get("busy") else 0
