"""The shape sweep: SoViT's law fitted to known data, shapes built from the centre, and a
micro star sweep on the bundled digits through plan, run, fit and report."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

import mlit
from mlit.population import layout
from mlit.recipe.reading import RecipeError
from mlit.recipe.schema import model_settings
from mlit.shape.__main__ import main
from mlit.shape.fit import UntrustedFit, fit_law
from mlit.shape.recipe import DIMS, load_sweep, shape_of, with_shape

from helpers import THREADS

ROOT = Path(__file__).parents[1]
TRUE = dict(alpha=30.0, a=0.7, beta=2e3, b=0.5, xi=50.0, c=0.35, eps=0.08)


def law_points(noise: float, seed: int = 0):
    x, t = np.meshgrid([32, 64, 96, 128, 192, 256, 384], np.logspace(13, 16, 6))
    x, t = x.ravel().astype(float), t.ravel()
    f = TRUE["alpha"] * x ** -TRUE["a"] + (TRUE["beta"] * x ** TRUE["b"] + TRUE["xi"]) * \
        t ** -TRUE["c"] + TRUE["eps"]
    return x, t, f * np.exp(np.random.default_rng(seed).normal(0, noise, f.shape))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_fit_recovers_the_laws_exponent_from_noisy_points(seed):
    fit = fit_law(*law_points(noise=0.02, seed=seed), dim="d")
    exponent = TRUE["c"] / (TRUE["a"] + TRUE["b"])
    assert abs(fit.exponent - exponent) / exponent < 0.10, fit.params
    t = 1e15
    true_x = (TRUE["a"] * TRUE["alpha"] * t ** TRUE["c"] / (TRUE["b"] * TRUE["beta"])) ** (
        1 / (TRUE["a"] + TRUE["b"]))
    assert abs(fit.optimal(t) - true_x) / true_x < 0.25
    assert fit.rms_log_residual < 0.03


def test_the_fit_refuses_what_it_cannot_trust():
    x, t, f = law_points(noise=0.0)
    with pytest.raises(UntrustedFit, match="5 points for the law's 7 parameters"):
        fit_law(x[:5], t[:5], f[:5])
    two_values = np.isin(x, (32, 64))
    with pytest.raises(UntrustedFit, match="2 values of x and 6 of compute"):
        fit_law(x[two_values], t[two_values], f[two_values])
    # the error only falls as x grows (no cost to size): there is no optimum
    monotone = 5 * x ** -0.5 + 40 * t ** -0.3 + 0.05
    with pytest.raises(UntrustedFit, match="no optimum"):
        fit_law(x, t, monotone)
    # a cliff steeper than the law's bounds allow: the exponent is the bound's, not the data's
    cliff = 1e12 * x ** -7.0 + (TRUE["beta"] * x ** 0.5 + TRUE["xi"]) * t ** -0.35 + 0.08
    with pytest.raises(UntrustedFit, match="ran to its bound 4"):
        fit_law(x, t, cliff)


def test_fit_command_reads_result_lines_and_says_why_it_refuses(tmp_path, capsys):
    x, t, f = law_points(noise=0.01)
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps({"d": a, "compute": b, "error": c, "run": "ignored"})
                            + "\n" for a, b, c in zip(x, t, f)))
    assert main(["fit", str(path), "--dim", "d", "--compute", "1e15", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["params"]) == {"alpha", "a", "beta", "b", "xi", "c", "eps"}
    assert abs(out["exponent"] - 0.35 / 1.2) < 0.03 and out["optimal"] > 0
    assert out["extrapolated"] is True  # the optimum at 1e15 lies beyond x = 384
    path.write_text("".join(json.dumps({"d": a, "compute": b, "error": c}) + "\n"
                            for a, b, c in list(zip(x, t, f))[:4]))
    assert main(["fit", str(path), "--dim", "d"]) == 2
    assert capsys.readouterr().err == ("mlit.shape: the fit of d cannot be trusted: 4 points "
                                       "for the law's 7 parameters (needs at least 8)\n")


def test_shapes_follow_the_centre():
    centre = mlit.model_config("mlit_s")
    assert shape_of(centre) == {"d": 144, "L": 15, "h1": 144, "E_max": 5, "k": 2}
    wide = with_shape(centre, {**shape_of(centre), "d": 216})
    assert (wide.embed_dim, wide.num_heads, wide.num_kv_groups) == (216, 12, 6)  # head 18
    narrow = with_shape(centre, {**shape_of(centre), "h1": 96})
    assert (narrow.hidden_first, narrow.hidden_last) == (96, 48)  # hL / h1 kept at 1/2
    many = with_shape(centre, {**shape_of(centre), "E_max": 9})
    assert many.expert_stages == (3, 6, 9)
    with pytest.raises(ValueError, match="d=100: needs a multiple of the centre's head size 18"):
        with_shape(centre, {**shape_of(centre), "d": 100})


def test_a_sweep_recipe_names_a_shape_that_cannot_be_built(tmp_path):
    tree = yaml.safe_load((ROOT / "recipes/shape_sweep.yaml").read_text())
    tree["dims"]["k"] = [4]  # more experts per token than the first stage's 3
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(tree))
    with pytest.raises(RecipeError, match=r"^dims.k=4: top_k=4: cannot exceed the fewest"):
        load_sweep(path)
    assert len(load_sweep(ROOT / "recipes/shape_sweep.yaml").shapes()) == 19


MICRO = {
    "name": "micro", "centre": {"name": "mlit_micro"}, "dims": {"d": [8, 16, 24]},
    "stage": "supervised", "budgets": [1.5e9, 3.0e9, 6.0e9],
    "data": {"dataset": "digits", "num_workers": 0, "pipeline": "device"},
    "train": {"progress": False, "threads": THREADS, "log_every": 100},
    "supervised": {"batch_size": 128, "base_lr": 4e-3,
                   "augment": {"crop_scale": [0.7, 1.0], "hflip": False}},
}


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted((ROOT / "recipes").glob("shape_sweep*.yaml")),
                         ids=lambda p: p.stem)
def test_a_shipped_sweeps_plan_has_the_counters_flops(recipe):
    """The plan's FLOPs per image (the closed form) are torch's FlopCounterMode's, counted on
    the meta device for every shape of the shipped sweep, so every run's epochs are too."""
    from mlit.data.catalogue import dataset_info
    from mlit.model.flops import counted_training_flops
    from mlit.shape.plan import plan

    sweep = load_sweep(str(recipe), [])
    classes = dataset_info(sweep.data).num_classes
    runs = plan(sweep)
    assert len(runs) == len(sweep.shapes()) * len(sweep.budgets) * len(sweep.kinds())
    counted = {}
    for run in runs:
        shape = {dim: run.factors[dim] for dim in DIMS}
        key = (tuple(shape.values()), run.kind)
        if key not in counted:
            cfg = model_settings(sweep.model_for(shape), num_classes=classes)
            counted[key] = counted_training_flops(cfg, run.kind)
        assert run.factors["flops_per_image"] == counted[key], run.path


@pytest.mark.slow  # trains its nine runs
def test_a_micro_sweep_plans_runs_fits_and_reports(tmp_path, capsys):
    recipe = tmp_path / "micro.yaml"
    recipe.write_text(yaml.safe_dump(MICRO))
    sweep_dir = tmp_path / "sweep"
    assert main(["plan", str(recipe), "--json"]) == 0
    planned = json.loads(capsys.readouterr().out)
    assert len(planned) == 3 * 3
    epochs = {(r["d"], r["budget"]): r["epochs"] for r in planned}
    assert epochs[(16, 6e9)] > epochs[(16, 1.5e9)] and epochs[(8, 6e9)] > epochs[(24, 6e9)]
    assert main(["run", str(recipe), "--sweep-dir", str(sweep_dir)]) == 0
    capsys.readouterr()
    assert main(["status", str(recipe), "--sweep-dir", str(sweep_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "planned": 9, "done": [f"training/{r['name']}" for r in sorted(
            planned, key=lambda r: f"training/{r['name']}")]}
    assert main(["report", str(sweep_dir)]) == 0
    block = yaml.safe_load(capsys.readouterr().out)
    model_settings(block["model"])  # the recommended block is a model a recipe can use
    out = sweep_dir / "report"
    records = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines()]
    assert len(records) == 9
    for r in records:  # compute is measured: images trained on x counted FLOPs per image
        config = json.loads((sweep_dir / r["run"] / "config.json").read_text())
        steps = layout.read_results(sweep_dir / r["run"])[-1]["step"]
        assert r["compute"] == steps * 128 * config["factors"]["flops_per_image"]
        assert 0.5 < r["compute"] / r["budget"] < 1.6 and 0 < r["error"] <= 1
    fits = json.loads((out / "fits.json").read_text())
    assert set(fits) == {"d"}
    if fits["d"].get("trusted") is False:  # a micro sweep may not support the law
        assert fits["d"]["reason"] and "cannot be trusted" in (out / "report.md").read_text()
    else:
        assert fits["d"]["exponent"] > 0 and fits["d"]["optimal"] > 0
    assert (out / "d.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the fit command reads the report's lines the same way
    code = main(["fit", str(out / "results.jsonl"), "--dim", "d", "--json"])
    assert code == (2 if fits["d"].get("trusted") is False else 0)
