"""Compute-optimal mLiT shapes: a SoViT star sweep and its scaling-law fits (docs/shape.md).

    python -m mlit.shape plan recipes/shape_sweep.yaml [--json]
    python -m mlit.shape run recipes/shape_sweep.yaml [--sweep-dir DIR] [--shard i/n] [--launcher ray]
    python -m mlit.shape status recipes/shape_sweep.yaml [--sweep-dir DIR] [--json]
    python -m mlit.shape fit RESULTS.jsonl --dim d [--compute 1e16] [--json]
    python -m mlit.shape report SWEEP_DIR [--compute 1e16] [--out DIR]

`run` trains what is missing through mlit.population's runner (skip, resume, shards, Ray); the sweep
folder defaults to sweeps/<recipe name>. `fit` reads lines {"<dim>": x, "compute": t, "error":
f} (extra keys ignored; lines with an `arms` list count for the dimensions it names) and
prints SoViT's law, the exponent of the optimal x and, with --compute, x* there; a fit that
cannot be trusted says why and exits 2. `report` writes results.jsonl, fits.json, a figure
per dimension, report.md, and prints the recommended model block for --compute (default: the
largest compute the sweep reached). Overrides (key=value) follow the recipe.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mlit.cli import launcher_flags, number, run_command
from mlit.errors import BadInput, nothing_to_resume
from mlit.files.atomic import write_text_atomic
from mlit.files.jsonl import read_jsonl
from mlit.files.paths import input_folder, output_folder
from mlit.files.records import check_shape_points

COMPUTE = number(float, 0, low_open=True)  # FLOPs


def parse(argv):
    parser = argparse.ArgumentParser(prog="python -m mlit.shape", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("plan", "list every run"), ("run", "train the missing runs"),
                       ("status", "done / running / failed per run")):
        p = sub.add_parser(name, help=text)
        p.add_argument("recipe")
        p.add_argument("overrides", nargs="*")
        p.add_argument("--sweep-dir", help="default sweeps/<recipe name>")
        p.add_argument("--json", action="store_true")
        if name == "run":
            launcher_flags(p)
    f = sub.add_parser("fit", help="fit the scaling law of one dimension")
    f.add_argument("results")
    f.add_argument("--dim", required=True, help="d, L, h1, E_max or k (any key of the lines)")
    f.add_argument("--compute", type=COMPUTE, default=None, help="FLOPs for the optimal x")
    f.add_argument("--json", action="store_true")
    r = sub.add_parser("report", help="fits, figures and the recommended shape")
    r.add_argument("sweep_dir")
    r.add_argument("--compute", type=COMPUTE, default=None, help="FLOPs for the shape")
    r.add_argument("--out", default=None, help="default SWEEP_DIR/report")
    return parser.parse_args(argv)


def fit_command(args) -> int:
    from mlit.shape.fit import UntrustedFit, fit_law, points_for

    path = Path(args.results)
    if not path.is_file():
        raise BadInput(f"{path}: no such results file")
    records = read_jsonl(path)
    check_shape_points(records, args.dim, path)
    try:
        fit = fit_law(*points_for(records, args.dim), dim=args.dim)
    except UntrustedFit as err:
        if args.json:
            print(json.dumps({"dim": args.dim, "trusted": False, "reason": str(err)}))
        print(f"mlit.shape: the fit of {args.dim} cannot be trusted: {err}", file=sys.stderr)
        return 2
    result = fit.as_dict(args.compute)
    if args.json:
        print(json.dumps(result))
        return 0
    p = fit.params
    print(f"{args.dim}: f = {p['alpha']:.4g} x^-{p['a']:.3f} + ({p['beta']:.4g} x^{p['b']:.3f} "
          f"+ {p['xi']:.4g}) t^-{p['c']:.3f} + {p['eps']:.4g}   ({fit.points} points, rms log "
          f"residual {fit.rms_log_residual:.3f})")
    print(f"optimal {args.dim} grows as compute^{fit.exponent:.3f}")
    if args.compute:
        note = " (outside the values fitted)" if result["extrapolated"] else ""
        print(f"optimal {args.dim} at {args.compute:.3g} FLOPs: {result['optimal']:.4g}{note}")
    return 0


def main(argv=None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    return run_command("mlit.shape", lambda: COMMANDS[args.command](args))


def report_command(args) -> int:
    from mlit.shape.report import read_sweep, write_report

    read_sweep(input_folder(args.sweep_dir, "sweep", "--sweep-dir"))  # a sweep folder, before anything is written
    out = output_folder(args.out or Path(args.sweep_dir) / "report", "--out")
    result = write_report(args.sweep_dir, args.compute, out)
    print(result["block"], end="")
    print(f"wrote {result['out']}/report.md, results.jsonl, fits.json and a figure per "
          "dimension", file=sys.stderr)
    return 0


def sweep_command(args) -> int:
    from mlit.shape.recipe import load_sweep

    sweep = load_sweep(args.recipe, args.overrides)  # a bad recipe first, before the runner
    from mlit.population.plan import parse_shard, shard
    from mlit.shape.plan import plan

    if args.command in ("plan", "status"):
        with nothing_to_resume():
            return show_plan(args, sweep, plan)
    sweep_dir = sweep_folder(args, sweep)
    runs = plan(sweep, sweep_dir)
    import yaml

    from mlit.population.launch import train_all
    from mlit.shape.report import SWEEP_FILE

    output_folder(sweep_dir, "--sweep-dir")
    write_text_atomic(sweep_dir / SWEEP_FILE,
                      yaml.safe_dump(sweep.model_dump(mode="json", exclude_none=True),
                                     sort_keys=False))
    return train_all(sweep_dir, shard(runs, *parse_shard(args.shard)), args, "mlit.shape")


def sweep_folder(args, sweep) -> Path:
    return Path(args.sweep_dir or Path("sweeps") / sweep.name)


def show_plan(args, sweep, plan) -> int:
    """`plan`: every run with its epochs; `status`: how many have started, by state."""
    sweep_dir = sweep_folder(args, sweep)
    if args.command == "status":
        from mlit.population.layout import summarize

        states = summarize(sweep_dir) if sweep_dir.is_dir() else {}
        total = len(plan(sweep, sweep_dir))
        if args.json:
            print(json.dumps({"planned": total, **states}, indent=2))
        else:
            done = sum(len(v) for v in states.values())
            print(f"{sweep_dir}: {total} runs planned, {done} started; " + ", ".join(
                f"{len(v)} {k}" for k, v in sorted(states.items())))
        return 0
    runs = plan(sweep, sweep_dir)
    if args.json:
        print(json.dumps([{**r.as_dict(), "epochs": getattr(r.recipe, r.kind).epochs}
                          for r in runs], indent=1))
    else:
        for r in runs:
            print(f"{r.path}  ({getattr(r.recipe, r.kind).epochs} epochs)")
        sys.stdout.flush()  # the count after the runs, also where both go to one terminal
        print(f"{len(runs)} runs", file=sys.stderr)
    return 0


COMMANDS = {"plan": sweep_command, "run": sweep_command, "status": sweep_command,
            "fit": fit_command, "report": report_command}


if __name__ == "__main__":
    sys.exit(main())
