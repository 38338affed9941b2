"""The runs of a shape sweep: every shape of the star at every budget, each trained for as many
epochs as its budget buys at its own FLOPs per image (mlit/model/closed_form.py: torch's counter's
figure, in closed form), laid out as a
zoo is: `training/<run>/` (one-stage sweeps), or `pretraining/<run>/` and
`finetuning/<run>/ft/` (MAE then fine-tuning). The zoo's runner trains them (skip, resume,
shards, Ray)."""

from __future__ import annotations

from pathlib import Path

from mlit.data.catalogue import dataset_info
from mlit.model.flops import training_flops
from mlit.population.plan import PlannedRun
from mlit.recipe.schema import model_settings
from mlit.shape.recipe import ShapeSweep


def run_name(shape: dict[str, int], budget: float) -> str:
    return (f"d{shape['d']}_L{shape['L']}_h{shape['h1']}_E{shape['E_max']}_k{shape['k']}"
            f"_t{budget:.1e}").replace("+", "")


def images_per_epoch(sweep: ShapeSweep, kind: str, train_size: int) -> int:
    """Images one epoch trains on: whole batches of the training split (drop_last)."""
    batch = getattr(sweep, kind).batch_size
    return train_size // batch * batch


def plan(sweep: ShapeSweep, sweep_dir: str | Path = ".") -> list[PlannedRun]:
    """Every (shape, budget); first stages first, in a stable order, so shards are too. Each
    shape's FLOPs are worked out once and the dataset is looked at once."""
    sweep_dir = Path(sweep_dir)
    info = dataset_info(sweep.data)

    def epochs_for(flops: float, kind: str, per_image: float) -> int:
        return max(1, round(flops / (per_image * images_per_epoch(sweep, kind,
                                                                   info.train_size))))

    first, second = [], []
    for shape, arms in sweep.shapes():
        cfg = model_settings(sweep.model_for(shape), num_classes=info.num_classes)
        counted = {kind: training_flops(cfg, kind) for kind in sweep.kinds()}  # per image
        for budget in sweep.budgets:
            name = run_name(shape, budget)
            factors = {**shape, "arms": arms, "budget": budget}
            if sweep.stage != "mae_finetune":
                kind = sweep.kinds()[0]
                per_image = counted[kind]
                epochs = epochs_for(budget, kind, per_image)
                first.append(PlannedRun(name, f"training/{name}", kind, {
                    **factors, "flops_per_image": per_image, "final": True},
                    sweep.run_recipe(name, kind, shape, epochs)))
                continue
            share = sweep.pretrain_share
            pre, fine = counted["pretrain"], counted["finetune"]
            backbone = f"pretraining/{name}"
            first.append(PlannedRun(name, backbone, "pretrain", {
                **factors, "flops_per_image": pre, "final": False},
                sweep.run_recipe(name, "pretrain", shape,
                                 epochs_for(share * budget, "pretrain", pre))))
            second.append(PlannedRun("ft", f"finetuning/{name}/ft", "finetune", {
                **factors, "flops_per_image": fine, "final": True},
                sweep.run_recipe("ft", "finetune", shape,
                                 epochs_for((1 - share) * budget, "finetune", fine),
                                 init=sweep_dir / backbone / "checkpoint.pt"), backbone))
    return first + second
