"""Run a recipe: MAE pre-training, then fine-tuning (or supervised training), resumable.

    python -m mlit.train recipes/quickstart.yaml
    python -m mlit.train recipes/mmlit_s.yaml data.download=true train.amp=bf16

Output under `train.out` (default runs/<recipe name>): recipe.yaml (resolved), one folder per
stage with checkpoint.pt (the last, written atomically), metrics.jsonl (one line per epoch),
tb/ (TensorBoard) and summary.json. Running the same command again resumes; one process at a
time writes a run folder (a second one exits with the holder's PID).

Exit status (mlit/errors.py): 0 done; 1 a fault at run time (a non-finite loss, a full disk),
with the last good checkpoint named; 2 bad input (recipe, dataset, checkpoint, busy folder),
before any work; 130 / 143 interrupted by SIGINT / SIGTERM, with where it stopped and the
checkpoint the same command resumes from.
"""

from __future__ import annotations

import json
import sys

from mlit import distributed
from mlit.cli import run_command
from mlit.recipe.schema import load_recipe
from mlit.training.recipe_run import run


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2

    def body() -> int:
        summary = run(load_recipe(argv[0], argv[1:]))
        if distributed.world().writer:
            print(json.dumps({k: v for k, v in summary.items() if k != "stages"}))
        return 0
    try:
        return run_command("mlit.train", body)
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    sys.exit(main())
