"""Evaluate a trained model on a dataset's test split.

    python -m mlit.eval runs/quickstart/finetune/checkpoint.pt
    python -m mlit.eval zoos/mlit/finetuning/mae_seed0/ft_lr1e-03_adamw_linear_seed1/checkpoint_000050/model.pt
    python -m mlit.eval model.safetensors data.dataset=cifar10 data.root=data --json

Any file the project writes: a stage's checkpoint.pt, a zoo epoch's model.pt, an export
(.safetensors or .onnx, the latter in ONNX Runtime). The model comes from the file alone; the
dataset, the batch size and the precision from the run's resolved recipe.yaml (beside the
file or up to two folders above it; an export carries its recipe in its metadata). `data.*`,
`train.device`, `train.amp` and `batch_size=N` override them. The evaluation is the runner's
own, on the same batches, so a run's final checkpoint gives its summary.json test_acc
exactly (mlit/inference/evaluation.py).

Prints top-1, top-5 and loss (fractions, as summary.json), per-class accuracy, and the share of
tokens each expert receives per layer; writes into --out (default: eval_<dataset>/ beside the
file) eval.json, confusion.png (rows: true class) and experts.png (rows: classes; columns: the
experts of every MoE layer; a cell is the share of that class's tokens the expert takes in its
layer). MAE and SimCLR checkpoints report their losses and the expert shares.
"""

from __future__ import annotations

import argparse
import json
import sys

from mlit.cli import run_command
from mlit.files.modelfile import model_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlit.eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("overrides", nargs="*", help="data.*, train.device, train.amp, "
                                                     "batch_size")
    parser.add_argument("--out", help="where the figures and eval.json go "
                                      "(default: eval_<dataset>/ beside the checkpoint)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    return run_command("mlit.eval", lambda: report(args))


def report(args) -> int:
    model_path(args.checkpoint)  # a missing file is named before the evaluation loads
    from mlit.inference.evaluation import evaluate_file, summary_lines

    result = evaluate_file(args.checkpoint, args.overrides, args.out)
    if args.json:
        print(json.dumps({k: v for k, v in result.items()
                          if k not in ("confusion", "expert_share_per_class")}))
    else:
        print("\n".join(summary_lines(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
