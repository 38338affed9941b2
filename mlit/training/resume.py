"""What a resumed run may change: the resume rules of a run folder (docs/training.md).

A run folder's checkpoints belong to the recipe in its recipe.yaml. Running again with the
same recipe resumes; a change to anything that decides what is trained is refused, listing
the fields (`changed_fields`), unless train.resume=false starts over.
"""

from __future__ import annotations

from mlit.recipe.schema import Recipe

# Fields a resumed run may change: where and how it runs, how often it logs and checkpoints,
# how it finds its data; none changes what is trained. Every other change is refused, because
# the run folder's checkpoints belong to the recipe in its recipe.yaml.
SAFE_ON_RESUME = {"name", "train.out", "train.resume", "train.stop_after_epochs",
                  "train.checkpoint_minutes",
                  "train.progress", "train.log_every", "train.threads", "train.compile",
                  "train.compile_mode", "train.device", "data.root", "data.download",
                  "data.num_workers", "data.pipeline", "model.moe_impl"}
SAFE_STAGE_FIELDS = {"eval_every", "checkpoint_every", "knn_every"}


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def resolved_fields(recipe: Recipe) -> dict[str, object]:
    """Every setting as dotted keys, the model as the full configuration it builds."""
    tree = recipe.model_dump(mode="json", exclude_none=True)
    tree["model"] = {"name": recipe.model["name"], **{
        k: list(v) if isinstance(v, tuple) else v
        for k, v in vars(recipe.model_settings()).items()}}
    return flatten(tree)


def changed_fields(old: Recipe, new: Recipe) -> list[tuple[str, object, object]]:
    """(key, old, new) for every setting that differs and may not change on resume."""
    a, b = resolved_fields(old), resolved_fields(new)
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and k not in SAFE_ON_RESUME
            and k.split(".")[-1] not in SAFE_STAGE_FIELDS]
