"""A finished (or partly finished) sweep as results, fits, figures and a recommended shape.

    results.jsonl   one line per finished run: the shape (d, L, h1, E_max, k), `arms`, the
                    budget, the measured `compute` (FLOPs per training image, counted on the
                    model, times the images its runs trained on) and the `error`
    fits.json       every dimension's fit (or why it cannot be trusted)
    <dim>.png       error against compute per value with the fitted curves and their
                    frontier, and the optimal value against compute
    report.md       all of it, and the recommended model block for --compute
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from mlit.errors import BadInput
from mlit.files.atomic import write_json
from mlit.files.jsonl import write_jsonl
from mlit.inference.figures import pyplot
from mlit.population import layout
from mlit.recipe.reading import RecipeError, parse_yaml, validate
from mlit.recipe.schema import model_settings
from mlit.shape.fit import Fit, UntrustedFit, fit_law, points_for
from mlit.shape.recipe import DIMS, ShapeSweep, shape_of, with_shape

SWEEP_FILE = "sweep.yaml"  # the resolved sweep recipe, written by `run`


def read_sweep(sweep_dir: Path) -> ShapeSweep:
    path = sweep_dir / SWEEP_FILE
    if not path.is_file():
        raise RecipeError(f"{sweep_dir}: no {SWEEP_FILE} (not a sweep folder; "
                          "python -m mlit.shape run writes it)")
    tree = parse_yaml(path.read_text(errors="replace"), str(path))
    if not isinstance(tree, dict):
        raise RecipeError(f"{path}: not a sweep recipe (a YAML mapping)")
    try:
        return validate(ShapeSweep, tree)
    except RecipeError as err:
        raise RecipeError(f"{path}: {err}") from None


def stage_images(model_dir: Path, config: dict) -> int:
    """Training images a run went through: its steps times its batch size."""
    results = layout.read_results(model_dir)
    stage = config["recipe"][config["stage"]]
    return results[-1]["step"] * stage["batch_size"] if results else 0


def collect(sweep_dir: Path) -> list[dict]:
    """The finished runs' shape, budget, measured compute and error; for MAE + fine-tuning
    the compute of both stages."""
    records = []
    for model_dir in layout.model_dirs(sweep_dir):
        if layout.status(model_dir) != "done":
            continue
        config = json.loads((model_dir / "config.json").read_text())
        factors = config["factors"]
        if not factors.get("final"):
            continue
        compute = stage_images(model_dir, config) * factors["flops_per_image"]
        if config.get("backbone"):
            backbone = sweep_dir / config["backbone"]
            first = json.loads((backbone / "config.json").read_text())
            compute += stage_images(backbone, first) * first["factors"]["flops_per_image"]
        last = layout.read_results(model_dir)[-1]
        error = 1 - last["test_acc"] if "test_acc" in last else last["test_loss"]
        records.append({"run": str(model_dir.relative_to(sweep_dir)),
                        **{d: factors[d] for d in DIMS}, "arms": factors["arms"],
                        "budget": factors["budget"], "compute": compute, "error": error,
                        "epochs": last["epoch"]})
    return records


def fit_dims(records: list[dict], dims) -> dict[str, Fit | str]:
    """Each dimension's fit, or the reason it cannot be trusted."""
    fits: dict[str, Fit | str] = {}
    for dim in dims:
        try:
            fits[dim] = fit_law(*points_for(records, dim), dim=dim)
        except UntrustedFit as err:
            fits[dim] = str(err)
    return fits


def figure(path: Path, dim: str, records: list[dict], fit: Fit | str) -> None:
    x, t, f = (np.array(v, float) for v in points_for(records, dim))
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    grid = np.logspace(np.log10(t.min()), np.log10(t.max()), 60)
    for i, value in enumerate(sorted(set(x))):
        pick = x == value
        order = np.argsort(t[pick])
        left.plot(t[pick][order], f[pick][order], "o", color=f"C{i % 10}", label=f"{dim}={value:g}")
        if isinstance(fit, Fit):
            left.plot(grid, fit.error(value, grid), "-", color=f"C{i % 10}", lw=1)
    if isinstance(fit, Fit):
        optimal = np.array([fit.optimal(g) for g in grid])
        left.plot(grid, fit.error(optimal, grid), "k--", lw=1.2, label="frontier f(x*(t), t)")
        right.plot(grid, optimal, "k-", label=f"x* ~ t^{fit.exponent:.3f}")
        right.axhspan(x.min(), x.max(), color="tab:blue", alpha=0.12, label="values swept")
        right.set(xscale="log", yscale="log", xlabel="training FLOPs", ylabel=f"optimal {dim}")
        right.legend(fontsize=8)
    else:
        right.text(0.5, 0.5, f"no fit:\n{fit}", ha="center", va="center", wrap=True,
                   fontsize=8, transform=right.transAxes)
        right.set_axis_off()
    left.set(xscale="log", yscale="log", xlabel="training FLOPs", ylabel="error",
             title=f"{dim}: error against compute")
    left.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def snap(dim: str, value: float, centre) -> int:
    """The nearest value of `dim` the model accepts (d: a multiple of the centre's head
    size times its heads per group; others: whole numbers in range)."""
    if dim == "d":
        step = centre.embed_dim // centre.num_heads * (centre.num_heads // centre.num_kv_groups)
        return max(step, step * round(value / step))
    if dim == "L":
        return max(len(centre.expert_stages), round(value))
    if dim == "E_max":
        return max(centre.top_k, round(value))
    if dim == "k":
        return max(1, min(round(value), min(centre.expert_stages)))
    return max(1, round(value))


def recommend(sweep: ShapeSweep, fits: dict, compute: float) -> tuple[dict, list[str]]:
    """The shape each trusted fit puts at `compute` (the centre's value elsewhere), as a
    recipe `model` section, and a comment line per dimension."""
    centre = sweep.centre_config()
    shape, notes = shape_of(centre), []
    for dim in DIMS:
        fit = fits.get(dim)
        if isinstance(fit, Fit):
            x = fit.optimal(compute)
            shape[dim] = snap(dim, x, centre)
            where = " (outside the values swept)" if not fit.x_range[0] <= x <= fit.x_range[1] \
                else ""
            notes.append(f"{dim} = {shape[dim]}: the fit's optimum is {x:.4g}{where}, "
                         f"growing as compute^{fit.exponent:.3f}")
        elif fit is not None:
            notes.append(f"{dim} = {shape[dim]} (the centre's): its fit cannot be trusted, {fit}")
        else:
            notes.append(f"{dim} = {shape[dim]} (the centre's): not swept")
    cfg = with_shape(centre, shape)
    model = {"name": sweep.centre["name"], **{
        k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(cfg).items()
        if k in ("embed_dim", "num_heads", "num_kv_groups", "depth", "hidden_first",
                 "hidden_last", "expert_stages", "top_k")}}
    model_settings(model)  # the block builds
    return model, notes


def model_block(model: dict, notes: list[str], compute: float) -> str:
    lines = [f"# recommended by python -m mlit.shape report for {compute:.3g} training FLOPs"]
    lines += [f"# {n}" for n in notes]
    return "\n".join(lines) + "\n" + yaml.safe_dump({"model": model}, sort_keys=False,
                                                    default_flow_style=None)


def write_report(sweep_dir: str | Path, compute: float | None = None,
                 out: str | Path | None = None) -> dict:
    sweep_dir = Path(sweep_dir)
    sweep = read_sweep(sweep_dir)
    out = Path(out) if out else sweep_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    records = collect(sweep_dir)
    if not records:
        raise BadInput(f"{sweep_dir}: no finished run yet")
    write_jsonl(out / "results.jsonl", records)
    fits = fit_dims(records, list(sweep.dims))
    if compute is None:  # the largest budget swept
        compute = max(r["compute"] for r in records)
    summary = {dim: fit.as_dict(compute) if isinstance(fit, Fit) else
               {"dim": dim, "trusted": False, "reason": fit} for dim, fit in fits.items()}
    write_json(out / "fits.json", summary)
    for dim, fit in fits.items():
        figure(out / f"{dim}.png", dim, records, fit)
    model, notes = recommend(sweep, fits, compute)
    block = model_block(model, notes, compute)
    rows = []
    for dim, fit in fits.items():
        if isinstance(fit, Fit):
            p = fit.params
            rows.append(f"| {dim} | {fit.points} | {fit.exponent:.3f} | {p['a']:.3f} | "
                        f"{p['b']:.3f} | {p['c']:.3f} | {fit.optimal(compute):.4g} | "
                        f"{fit.rms_log_residual:.3f} |")
        else:
            rows.append(f"| {dim} | {len(points_for(records, dim)[0])} | cannot be trusted: "
                        f"{fit} | | | | | |")
    text = "\n\n".join([
        f"# Shape sweep: {sweep.name}",
        f"{len(records)} finished runs of {sweep.stage}; centre {sweep.centre}; budgets "
        f"{', '.join(f'{b:.3g}' for b in sweep.budgets)} training FLOPs. Error: "
        + ("1 - test top-1." if sweep.stage != "mae" else "the MAE test loss."),
        "Fits of f(x, t) = alpha x^-a + (beta x^b + xi) t^-c + eps per dimension; the "
        "optimal x grows as t^(c / (a + b)).",
        "| dim | points | exponent c/(a+b) | a | b | c | x* at "
        f"{compute:.3g} | rms log residual |\n|---|---|---|---|---|---|---|---|\n"
        + "\n".join(rows),
        "## Recommended shape", "```yaml\n" + block + "```",
        "## Figures", *[f"![{dim}]({dim}.png)" for dim in fits]])
    (out / "report.md").write_text(text + "\n")
    return {"out": str(out), "records": len(records), "fits": summary, "model": model,
            "compute": compute, "block": block}
