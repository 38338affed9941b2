"""Compute-optimal mLiT shapes: a SoViT star sweep and its scaling-law fits (docs/shape.md).

    python -m mlit.shape plan recipes/shape_sweep.yaml [--json]
    python -m mlit.shape run recipes/shape_sweep.yaml [--sweep-dir DIR] [--shard i/n] [--launcher ray]
    python -m mlit.shape status recipes/shape_sweep.yaml [--sweep-dir DIR] [--json]
    python -m mlit.shape fit RESULTS.jsonl --dim d [--compute 1e16] [--json]
    python -m mlit.shape report SWEEP_DIR [--compute 1e16] [--out DIR]

`run` trains what is missing through the zoo's runner (skip, resume, shards, Ray); the sweep
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

from mlit.config import RecipeError
from mlit.files import DamagedFile, read_jsonl, write_text_atomic


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
            p.add_argument("--shard", default="0/1", help="i/n: the i-th of n slices")
            p.add_argument("--launcher", choices=["local", "ray"], default="local")
            p.add_argument("--ray-address", default=None)
            p.add_argument("--ray-cpus", type=int, default=None)
    f = sub.add_parser("fit", help="fit the scaling law of one dimension")
    f.add_argument("results")
    f.add_argument("--dim", required=True, help="d, L, h1, E_max or k (any key of the lines)")
    f.add_argument("--compute", type=float, default=None, help="FLOPs for the optimal x")
    f.add_argument("--json", action="store_true")
    r = sub.add_parser("report", help="fits, figures and the recommended shape")
    r.add_argument("sweep_dir")
    r.add_argument("--compute", type=float, default=None)
    r.add_argument("--out", default=None, help="default SWEEP_DIR/report")
    return parser.parse_args(argv)


def fit_command(args) -> int:
    from mlit.shape.fit import UntrustedFit, fit_law, points_for

    path = Path(args.results)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such results file")
    try:
        fit = fit_law(*points_for(read_jsonl(path), args.dim), dim=args.dim)
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
    try:
        if args.command == "fit":
            return fit_command(args)
        if args.command == "report":
            from mlit.shape.report import write_report

            result = write_report(args.sweep_dir, args.compute, args.out)
            print(result["block"], end="")
            print(f"wrote {result['out']}/report.md, results.jsonl, fits.json and a figure per "
                  "dimension", file=sys.stderr)
            return 0
        return sweep_command(args)
    except (RecipeError, ValueError, RuntimeError, FileNotFoundError, DamagedFile) as err:
        print(f"mlit.shape: {err}", file=sys.stderr)
        return 2


def sweep_command(args) -> int:
    import yaml

    from mlit.shape.plan import plan
    from mlit.shape.recipe import load_sweep
    from mlit.shape.report import SWEEP_FILE
    from mlit.zoo.plan import parse_shard, shard

    sweep = load_sweep(args.recipe, args.overrides)
    sweep_dir = Path(args.sweep_dir or Path("sweeps") / sweep.name)
    if args.command == "status":
        from mlit.zoo.layout import summarize

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
    if args.command == "plan":
        if args.json:
            print(json.dumps([{**r.as_dict(), "epochs": getattr(r.recipe, r.kind).epochs}
                              for r in runs], indent=1))
        else:
            for r in runs:
                print(f"{r.path}  ({getattr(r.recipe, r.kind).epochs} epochs)")
            print(f"{len(runs)} runs", file=sys.stderr)
        return 0
    sweep_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(sweep_dir / SWEEP_FILE,
                      yaml.safe_dump(sweep.model_dump(mode="json", exclude_none=True),
                                     sort_keys=False))
    runs = shard(runs, *parse_shard(args.shard))
    if args.launcher == "ray":
        from mlit.zoo.launchers import run_ray

        outcome = run_ray(sweep_dir, runs, args.ray_address, args.ray_cpus)
    else:
        from mlit.zoo.runner import run_local

        outcome = run_local(sweep_dir, runs)
    print(json.dumps({k: len(v) for k, v in outcome.items()}), file=sys.stderr)
    return 1 if outcome.get("failed") else 3 if outcome.get("waiting") or \
        outcome.get("busy") else 0


if __name__ == "__main__":
    sys.exit(main())
