"""Model zoos of mLiT (the ViT model-zoo paper; docs/zoo.md).

    python -m mlit.zoo plan recipes/zoo.yaml [--json]
    python -m mlit.zoo run recipes/zoo.yaml [--zoo-dir DIR] [--shard i/n] [--launcher ray]
    python -m mlit.zoo status DIR [--json]
    python -m mlit.zoo analyze DIR [--out DIR/analysis] [--window 5] [--min-acc 0.65]

`run` trains what is missing, skips what is complete and resumes what was interrupted.
On Slurm: one array over `--phase pretraining --shard $SLURM_ARRAY_TASK_ID/N`, then one that
depends on it over `--phase finetuning`. Overrides (key=value) follow the recipe.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mlit.cli import launcher_flags, number, run_command
from mlit.errors import nothing_to_resume
from mlit.files.paths import input_folder, output_folder


def parse(argv):
    parser = argparse.ArgumentParser(prog="python -m mlit.zoo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plan", help="list every run and its factors")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--json", action="store_true")
    r = sub.add_parser("run", help="train the missing runs")
    r.add_argument("recipe")
    r.add_argument("overrides", nargs="*")
    r.add_argument("--zoo-dir", help="default zoos/<recipe name>")
    r.add_argument("--phase", choices=["all", "pretraining", "finetuning"], default="all")
    launcher_flags(r)
    s = sub.add_parser("status", help="done / running / failed per run")
    s.add_argument("zoo_dir")
    s.add_argument("--json", action="store_true")
    a = sub.add_parser("analyze", help="diversity tables, averaging, soups, MoTHeR")
    a.add_argument("zoo_dir")
    a.add_argument("--out", help="default ZOO_DIR/analysis")
    a.add_argument("--window", type=number(int, 1), default=5, help="epochs to average")
    a.add_argument("--mother-lambda", type=number(float, 0), default=0.3)
    a.add_argument("--mother-children", type=number(int, 1), default=12,
                   help="descendants per backbone in each MoTHeR experiment (the paper's 12)")
    a.add_argument("--min-acc", type=number(float, 0, 1), default=None,
                   help="keep fine-tunes whose final test accuracy (a fraction) reaches this, "
                        "as the paper's refined zoo (Table 2); default: all")
    a.add_argument("--longitudinal-models", type=number(int, 1), default=None,
                   help="limit Figure 3 to the first N fine-tunes (it evaluates every epoch)")
    a.add_argument("--device", default="auto")
    a.add_argument("--batch-size", type=number(int, 1), default=512)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    return run_command("mlit.zoo", lambda: COMMANDS[args.command](args))


def analyze(args) -> int:
    from mlit.zoo.analysis import ZooAnalysis
    from mlit.zoo.report import write_report

    zoo_dir = input_folder(args.zoo_dir, "zoo", "--zoo-dir")
    out = output_folder(args.out or zoo_dir / "analysis", "--out")
    result = ZooAnalysis(zoo_dir, args.device, args.batch_size, args.window,
                         args.mother_lambda, args.longitudinal_models, args.min_acc,
                         args.mother_children).run()
    report = write_report(result, out)
    print(f"wrote {report} and {report.with_name('analysis.json')}")
    return 0


def status(args) -> int:
    from mlit.population.layout import problem, summarize

    zoo_dir = input_folder(args.zoo_dir, "zoo", "--zoo-dir")
    states = summarize(zoo_dir)
    if args.json:
        print(json.dumps(states, indent=2))
        return 0
    total = sum(len(v) for v in states.values())
    if not total:
        print(f"{zoo_dir}: no models yet (python -m mlit.zoo run writes them there)")
        return 0
    print(f"{zoo_dir}: {total} models; " + ", ".join(
        f"{len(v)} {k}" for k, v in sorted(states.items())))
    for state in ("failed", "interrupted", "running", "damaged"):
        for path in states.get(state, []):
            why = f": {problem(zoo_dir / path) or 'status.json is damaged'}" \
                if state == "damaged" else ""
            print(f"  {state:<11} {path}{why}")
    return 0


def plan_runs(args) -> int:
    from mlit.zoo.plan import plan
    from mlit.zoo.recipe import load_zoo_recipe

    recipe = load_zoo_recipe(args.recipe, args.overrides)
    with nothing_to_resume():
        runs = plan(recipe)
    if args.json:
        print(json.dumps([r.as_dict() for r in runs], indent=1))
    else:
        for r in runs:
            print(f"{r.path}  " + " ".join(f"{k}={v}" for k, v in r.factors.items()))
        sys.stdout.flush()  # the count after the runs, also where both go to one terminal
        print(f"{len(runs)} runs", file=sys.stderr)
    return 0


def run(args) -> int:
    from mlit.population.launch import train_all
    from mlit.population.plan import parse_shard, shard
    from mlit.zoo.plan import plan
    from mlit.zoo.recipe import load_zoo_recipe

    zoo = load_zoo_recipe(args.recipe, args.overrides)
    zoo_dir = output_folder(args.zoo_dir or Path("zoos") / zoo.name, "--zoo-dir")
    runs = shard(plan(zoo, zoo_dir), *parse_shard(args.shard))
    if args.phase != "all":
        runs = [r for r in runs if (r.backbone is None) == (args.phase == "pretraining")]
    return train_all(zoo_dir, runs, args, "mlit.zoo")


COMMANDS = {"plan": plan_runs, "run": run, "status": status, "analyze": analyze}


if __name__ == "__main__":
    sys.exit(main())
