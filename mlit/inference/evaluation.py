"""Evaluating a trained model on its run's test split: what `python -m mlit.eval` computes.

The model comes from the file alone (a checkpoint, a zoo epoch's model.pt, a .safetensors or
an .onnx export); the dataset, the batch size and the precision from the run's resolved
recipe (recipe.yaml beside the file or up to two folders above it; an export carries its
recipe in its metadata), then from the overrides (`data.*`, `train.device`, `train.amp`,
`batch_size=N`). A PyTorch model runs the runner's own evaluation
(mlit.training.engine.evaluate) on the same batches, so a run's final checkpoint gives
its summary.json test_acc exactly; an ONNX file runs in ONNX Runtime. Both fill one
PredictionSummary (mlit/inference/summary.py).
"""

from __future__ import annotations

from pathlib import Path

import torch

from mlit.data.catalogue import dataset_info
from mlit.data.errors import DatasetError
from mlit.data.loaders import eval_loader
from mlit.files import modelfile
from mlit.files.atomic import write_json
from mlit.files.checkpoint import CheckpointError
from mlit.files.paths import output_folder
from mlit.files.weights import load_weights
from mlit.inference.figures import class_names, plot_confusion, plot_experts
from mlit.inference.summary import PredictionSummary
from mlit.model.moe import MoELayer
from mlit.model.registry import CLASSIFIER_KINDS, module_for
from mlit.recipe.reading import RecipeError, parse_override, validate
from mlit.recipe.schema import Data, Train
from mlit.training.engine import evaluate, select_device, select_precision


def settings(mf: modelfile.ModelFile, overrides: list[str]) -> tuple[Data, Train, int]:
    """Data, device/precision and batch size: the run's recipe, then the overrides, then the
    file's own normalisation (what the model was trained on) unless data.mean is given."""
    tree = mf.recipe or {}
    data = dict(tree.get("data") or {})
    train = {k: v for k, v in (tree.get("train") or {}).items() if k in ("device", "amp")}
    batch = (tree.get(mf.kind) or {}).get("batch_size", 256)
    for text in overrides:
        path, value = parse_override(text)
        key = ".".join(path)
        if path[0] == "data" and len(path) == 2:
            data[path[1]] = value
        elif key in ("train.device", "train.amp"):
            train[path[1]] = value
        elif key == "batch_size":
            batch = value
        else:
            raise RecipeError(f"{key}: mlit.eval takes data.*, train.device, train.amp and "
                              "batch_size")
    if "dataset" not in data:
        raise RecipeError(f"no recipe.yaml beside {mf.path} or above it: name the dataset "
                          "with data.dataset=... (and data.root=...)")
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise RecipeError(f"batch_size={batch!r}: must be a positive integer")
    data, train = validate(Data, data, "data"), validate(Train, train, "train")
    if mf.normalization and data.mean is None:
        data = data.model_copy(update={k: tuple(v) for k, v in mf.normalization.items()})
    return data, train, batch


def test_loader(mf: modelfile.ModelFile):
    """The CPU test loader of the run a file belongs to; None where that split is not here."""
    try:
        data, _, batch = settings(mf, [])
        return eval_loader(data, mf.config.image_size, batch, torch.device("cpu"))
    except (RecipeError, DatasetError):
        return None


class RoutingHooks:
    """Forward hooks on every MoE gate of a model: after each batch, `flush` adds the tokens
    each expert received, per image, to a PredictionSummary."""

    def __init__(self, model: torch.nn.Module):
        self.layers = [m for m in model.modules() if isinstance(m, MoELayer)]
        self.captured: list[tuple[int, torch.Tensor]] = []
        self.hooks = [m.gate.register_forward_hook(self.capture(i))
                      for i, m in enumerate(self.layers)]

    def capture(self, i: int):
        def hook(module, inputs, outputs):
            self.captured.append((i, outputs[0].detach()))
        return hook

    def flush(self, summary: PredictionSummary, targets: torch.Tensor) -> None:
        for i, gates in self.captured:  # gates (B*N, E), zero where a token is not routed
            summary.add_routing(i, (gates > 0).view(len(targets), -1, gates.shape[-1]).sum(1),
                                targets)
        self.captured.clear()

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()


def run_eval(model: torch.nn.Module, loader, precision, num_classes: int) -> dict:
    """The runner's evaluation (its losses: the model's eval_parts) and, from the same
    batches, the summary: top-1 and top-5, per class, the experts' shares."""
    classifier = hasattr(model, "predictions")
    hooks = RoutingHooks(model)
    summary = PredictionSummary(num_classes, [m.num_experts for m in hooks.layers])

    def each_batch(targets, out):
        summary.add(targets, out[0] if classifier else None)
        hooks.flush(summary, targets)

    try:
        losses = evaluate(model, loader, precision, each_batch)
    finally:
        hooks.remove()
    losses.pop("acc", None)  # the summary's top-1, the same count
    return {**losses, **summary.result(classifier)}


def evaluate_file(path: str | Path, overrides: list[str] = (), out: str | Path | None = None
                  ) -> dict:
    """Evaluate the model in `path` on its test split; write eval.json and the figures into
    `out` (default eval_<dataset>/ beside the file) and return what eval.json holds."""
    path = Path(path)
    onnx = path.name.endswith(".onnx")
    if onnx:
        from mlit.inference.onnx_runtime import evaluate_onnx, read_onnx
        mf = read_onnx(path)
        if mf.kind not in CLASSIFIER_KINDS:
            raise CheckpointError(f"{path} holds a {mf.kind} model: mlit.eval runs ONNX "
                                  "classifiers")
    else:
        mf = modelfile.read(path)
        if mf.kind == "encoder":
            raise CheckpointError(f"{mf.path} holds an encoder alone: there is no classifier "
                                  "or decoder to evaluate")
    data, train, batch = settings(mf, overrides)
    info = dataset_info(data)
    if mf.kind in CLASSIFIER_KINDS and mf.config.num_classes != info.num_classes:
        raise RecipeError(f"data.dataset={data.dataset}: has {info.num_classes} classes, the "
                          f"model in {mf.path} predicts {mf.config.num_classes}")
    out = output_folder(out or mf.path.parent / f"eval_{data.dataset}",
                        "--out" if out else "the output folder (--out)")
    if onnx:
        loader = eval_loader(data, mf.config.image_size, batch, torch.device("cpu"))
        measured = evaluate_onnx(path, loader, info.num_classes, mf.config.experts_per_layer())
        kind = f"{mf.kind}, ONNX Runtime"
    else:
        precision = select_precision(select_device(train.device), train.amp)
        model = load_weights(module_for(mf.kind, mf.config), mf.state,
                             str(mf.path)).to(precision.device)
        loader = eval_loader(data, mf.config.image_size, batch, precision.device)
        measured = run_eval(model, loader, precision, info.num_classes)
        kind = mf.kind
    result = {"checkpoint": str(mf.path), "model": mf.name, "kind": kind,
              "dataset": data.dataset, **measured}
    classes = mf.class_names or list(info.classes) or class_names(loader, info.num_classes)
    result["classes"] = classes
    decoder = mf.config.decoder_depth if mf.kind == "pretrain" else 0
    result["figures"] = write_figures(result, classes, out, decoder)
    write_json(out / "eval.json", result, indent=None)
    return result


def write_figures(result: dict, classes: list[str], out: Path, decoder_layers: int = 0
                  ) -> list[str]:
    """confusion.png and experts.png, titled with the model, the data and what it scored."""
    figures = []
    split = "val/" if result["dataset"] == "folder" else "test"
    title = (f"{result['model']} ({result['kind']})\n{result['dataset']} {split} split, "
             f"{result['images']} images")
    if "confusion" in result:
        plot_confusion(out / "confusion.png", result["confusion"], classes,
                       f"{title}, top-1 {result['top1']:.4f}")
        figures.append(str(out / "confusion.png"))
    if any(result["expert_share_per_class"]):
        plot_experts(out / "experts.png", result["expert_share_per_class"], classes, title,
                     decoder_layers)
        figures.append(str(out / "experts.png"))
    return figures


def summary_lines(r: dict) -> list[str]:
    """What mlit.eval prints: the file and split, the figures, the expert shares per layer."""
    split = "val/ split" if r["dataset"] == "folder" else "test split"  # a folder's is val/
    lines = [f"{r['checkpoint']}: {r['model']} ({r['kind']}); {r['dataset']} {split}, "
             f"{r['images']} images"]
    if r["top1"] is not None:
        seen = [(a, i) for i, a in enumerate(r["per_class_acc"]) if a is not None]
        worst, best = min(seen), max(seen)
        names = r.get("classes") or []

        def name(i: int) -> str:
            return f"class {i}: {names[i]}" if len(names) > i and names[i] != str(i) else \
                f"class {i}"
        lines.append(f"top-1 {r['top1']:.4f}  top-5 {r['top5']:.4f}  loss {r['loss']:.4f}")
        lines.append(f"per-class accuracy: lowest {worst[0]:.3f} ({name(worst[1])}), highest "
                     f"{best[0]:.3f} ({name(best[1])})")
    else:
        lines.append("  ".join(f"{k} {r[k]:.4f}" for k in ("loss", "masked", "unmasked")
                               if k in r))
    for i, share in enumerate(r["expert_share"]):
        lines.append(f"MoE layer {i:2d}: expert shares " + " ".join(f"{s:.2f}" for s in share))
    if r["figures"]:
        lines.append("wrote " + ", ".join(r["figures"] + [str(Path(r["figures"][0]).parent /
                                                              "eval.json")]))
    return lines
