"""Run a recipe: MAE pre-training, then fine-tuning (or supervised training), resumable.

    python -m mlit.train recipes/quickstart.yaml
    python -m mlit.train recipes/mmlit_s.yaml data.download=true train.amp=bf16
    python -m mlit.train --nproc-per-node 8 recipes/mmlit_s.yaml          # 8 GPUs, one node

Output under `train.out` (default runs/<recipe name>): recipe.yaml (resolved), one folder per
stage with checkpoint.pt (the last, written atomically), metrics.jsonl (one line per epoch),
tb/ (TensorBoard) and summary.json. Running the same command again resumes, from the step
where a signal stopped it; one process at a time writes a run folder (a second one exits
with the holder's PID).

Several processes (docs/distributed.md): --nproc-per-node N [--nnodes M --rdzv-endpoint
HOST:PORT --rdzv-id ID --rdzv-timeout SECONDS] starts them on torch's elastic launcher after
checking the recipe, the data and the run folder once; `torchrun ... -m mlit.train RECIPE`
works too.

Exit status (mlit/errors.py): 0 done; 1 a fault at run time (a non-finite loss, a full disk,
a lost process), with the last good checkpoint named; 2 bad input (recipe, dataset,
checkpoint, busy folder), before any work; 130 / 143 interrupted by SIGINT / SIGTERM, after
the step in flight, with where it stopped and the checkpoint the same command resumes from.
"""

from __future__ import annotations

import argparse
import json
import sys

from mlit import distributed
from mlit.cli import number, run_command
from mlit.recipe.schema import load_recipe

# the runner and the launcher (torchvision, torch.distributed's elastic agent) are imported
# when a run starts, so that --help and a bad recipe answer in the time torch takes to load


def launcher_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlit.train", description="one run on several "
                                     "processes (torch.distributed's elastic launcher)")
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*", help="key=value, as for one process")
    # not required: a mistyped flag is then named as unrecognised, not as this one missing
    parser.add_argument("--nproc-per-node", type=number(int, 1), default=1,
                        help="processes per node: one per GPU (default 1)")
    parser.add_argument("--nnodes", type=number(int, 1), default=1)
    parser.add_argument("--rdzv-endpoint", default="",
                        help="host:port of the rendezvous (several nodes)")
    parser.add_argument("--rdzv-id", default="", help="the job's id, the same on every node")
    parser.add_argument("--rdzv-backend", choices=["c10d", "static"], default="c10d")
    parser.add_argument("--node-rank", type=number(int, 0), default=0,
                        help="this node's rank (static rendezvous only)")
    parser.add_argument("--rdzv-timeout", type=number(int, 1), default=600, metavar="SECONDS",
                        help="how long the nodes may take to meet before the launcher gives "
                             "up (default 600, as torchrun)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    if any(a.startswith("--") for a in argv):
        args = launcher_parser().parse_intermixed_args(argv)
        from mlit.training.launcher import Nodes, launch

        nodes = Nodes(args.nproc_per_node, args.nnodes, args.rdzv_backend, args.rdzv_endpoint,
                      args.rdzv_id, args.node_rank, args.rdzv_timeout)
        argv = [args.recipe, *args.overrides]
        if nodes.processes > 1:
            return run_command("mlit.train", lambda: launch(nodes, argv))

    def body() -> int:
        distributed.init()  # under torchrun: first, so that ranks agree on what they report
        recipe = distributed.agreed(lambda: load_recipe(argv[0], argv[1:]))
        from mlit.training.recipe_run import run

        summary = run(recipe)
        if distributed.world().writer:
            print(json.dumps({k: v for k, v in summary.items() if k != "stages"}))
        return 0
    try:
        return run_command("mlit.train", body)
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    status = main()
    if distributed.torchrun_rank() is not None:
        distributed.leave(status)  # a worker: no interpreter teardown (distributed.leave)
    sys.exit(status)
