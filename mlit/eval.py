"""Evaluate a trained model on a dataset's test split.

    python -m mlit.eval runs/quickstart/finetune/checkpoint.pt
    python -m mlit.eval zoos/mlit/finetuning/mae_seed0/ft_lr1e-03_adamw_linear_seed1/checkpoint_000050/model.pt
    python -m mlit.eval model.safetensors data.dataset=cifar10 data.root=data --json

Any file the project writes: a stage's checkpoint.pt, a zoo epoch's model.pt, an export
(.safetensors). The model comes from the file alone; the dataset, the batch size and the
precision from the run's resolved recipe.yaml (beside the file or up to two folders above
it; an export carries its recipe in its metadata). `data.*`, `train.device`, `train.amp` and
`batch_size=N` override them. The evaluation is the runner's own (mlit.engine.eval_batches),
on the same batches, so a run's final checkpoint gives its summary.json test_acc exactly.

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
from pathlib import Path

import torch

from mlit import modelfile
from mlit.checkpoint import CheckpointError
from mlit.cli import output_folder, run_command
from mlit.config import Data, RecipeError, Train, parse_override, validate
from mlit.data.datasets import DatasetError, dataset_info
from mlit.data.loaders import eval_loader
from mlit.encoder import MLiT
from mlit.engine import eval_batches, eval_parts, select_precision
from mlit.files import write_json
from mlit.moe import MoELayer
from mlit.engine import select_device


def settings(mf: modelfile.ModelFile, overrides: list[str]) -> tuple[Data, Train, int]:
    """Data, device/precision and batch size: the run's recipe, then the overrides."""
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
    return validate(Data, data), validate(Train, train), batch


class ExpertShares:
    """Tokens each expert of each MoE layer receives, per class of the input image."""

    def __init__(self, model: torch.nn.Module, num_classes: int):
        self.layers = [m for m in model.modules() if isinstance(m, MoELayer)]
        self.counts = [torch.zeros(num_classes, m.num_experts) for m in self.layers]
        self.captured: list[tuple[int, torch.Tensor]] = []
        self.hooks = [m.gate.register_forward_hook(self.capture(i))
                      for i, m in enumerate(self.layers)]

    def capture(self, i: int):
        def hook(module, inputs, outputs):
            self.captured.append((i, outputs[0].detach()))
        return hook

    def add(self, targets: torch.Tensor) -> None:
        """Attribute the tokens the gates routed in the last batch to its images' classes."""
        for i, gates in self.captured:
            routed = (gates > 0).view(len(targets), -1, gates.shape[-1]).sum(1).float()
            self.counts[i].index_add_(0, targets.cpu(), routed.cpu())
        self.captured.clear()

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()

    def per_class(self) -> list[torch.Tensor]:
        return [c / c.sum(1, keepdim=True).clamp(min=1) for c in self.counts]

    def overall(self) -> list[list[float]]:
        return [(c.sum(0) / c.sum().clamp(min=1)).tolist() for c in self.counts]


def run_eval(model: torch.nn.Module, loader, precision, num_classes: int) -> dict:
    """One pass over the loader: the runner's metrics, top-5, the confusion matrix and the
    expert shares."""
    classifier = isinstance(model, MLiT)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    sums: dict[str, float] = {}
    top5, total = 0, 0
    shares = ExpertShares(model, num_classes)
    try:
        for targets, out in eval_batches(model, loader, precision):
            n = len(targets)
            for k, v in eval_parts(model, targets, out).items():
                sums[k] = sums.get(k, 0.0) + float(v) * n
            if classifier:
                logits = out[0]
                confusion.index_put_((targets.cpu(), logits.argmax(1).cpu()),
                                     torch.ones(n, dtype=torch.long), accumulate=True)
                k = min(5, num_classes)
                top5 += int((logits.topk(k, dim=1).indices == targets[:, None]).any(1).sum())
            shares.add(targets)
            total += n
    finally:
        shares.remove()
    result = {k: v / total for k, v in sums.items()}
    result.update(images=total, top1=None, top5=None)
    if classifier:
        per_class = confusion.diag().double() / confusion.sum(1)
        result.update(top1=int(confusion.diag().sum()) / total, top5=top5 / total,
                      per_class_acc=[None if x != x else float(x) for x in per_class],
                      confusion=confusion.tolist())
    result["expert_share"] = shares.overall()
    result["expert_share_per_class"] = [s.tolist() for s in shares.per_class()]
    return result


def plot_confusion(path: Path, confusion: list[list[int]], classes: list[str]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = torch.tensor(confusion, dtype=torch.float)
    m = m / m.sum(1, keepdim=True).clamp(min=1)
    n = len(m)
    fig, ax = plt.subplots(figsize=(min(4 + n * 0.12, 14),) * 2)
    image = ax.imshow(m.numpy(), cmap="Blues", vmin=0, vmax=1)
    if n <= 20:
        ax.set_xticks(range(n), classes, rotation=90, fontsize=7)
        ax.set_yticks(range(n), classes, fontsize=7)
    ax.set(xlabel="predicted class", ylabel="true class", title="Confusion (row-normalised)")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_experts(path: Path, per_class: list[list[list[float]]], classes: list[str]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = [torch.tensor(layer) for layer in per_class]
    m = torch.cat(blocks, dim=1)  # (classes, experts of every layer)
    fig, ax = plt.subplots(figsize=(min(3 + m.shape[1] * 0.18, 20),
                                    min(2.5 + m.shape[0] * 0.12, 14)))
    image = ax.imshow(m.numpy(), cmap="viridis", aspect="auto", vmin=0)
    edges, ticks, labels = 0, [], []
    for i, block in enumerate(blocks):
        ticks.append(edges + (block.shape[1] - 1) / 2)
        labels.append(str(i))
        edges += block.shape[1]
        ax.axvline(edges - 0.5, color="white", lw=0.8)
    ax.set_xticks(ticks, labels, fontsize=7)
    if len(classes) <= 30:
        ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set(xlabel="MoE layer (its experts side by side; encoder, then decoder)",
           ylabel="class", title="Share of each class's tokens per expert")
    fig.colorbar(image, ax=ax, fraction=0.03)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def class_names(loader, num_classes: int) -> list[str]:
    dataset = getattr(loader, "dataset", None)
    names = getattr(dataset, "classes", None)
    return [str(c) for c in names] if names and len(names) == num_classes else \
        [str(i) for i in range(num_classes)]


def file_settings(mf: modelfile.ModelFile, overrides) -> tuple[Data, Train, int]:
    """settings(), with the file's own normalisation (what the model was trained on)."""
    data, train, batch = settings(mf, list(overrides))
    if mf.normalization and data.mean is None:
        data = data.model_copy(update={k: tuple(v) for k, v in mf.normalization.items()})
    return data, train, batch


def test_loader(mf: modelfile.ModelFile):
    """The CPU test loader of the run a file belongs to; None where that split is not here."""
    try:
        data, _, batch = file_settings(mf, [])
        return eval_loader(data, mf.config.image_size, batch, torch.device("cpu"))
    except (RecipeError, DatasetError):
        return None


def evaluate_file(path: str | Path, overrides: list[str] = (), out: str | Path | None = None
                  ) -> dict:
    if Path(path).suffix == ".onnx":
        return evaluate_onnx_file(Path(path), overrides, out)
    mf = modelfile.read(path)
    if mf.kind == "encoder":
        raise CheckpointError(f"{mf.path} holds an encoder alone: there is no classifier "
                              "or decoder to evaluate")
    data, train, batch = file_settings(mf, overrides)
    info = dataset_info(data)
    if mf.kind in modelfile.CLASSIFIER_KINDS and mf.config.num_classes != info.num_classes:
        raise RecipeError(f"data.dataset={data.dataset}: has {info.num_classes} classes, the "
                          f"model in {mf.path} predicts {mf.config.num_classes}")
    precision = select_precision(select_device(train.device), train.amp)
    model = modelfile.load_weights(modelfile.module_for(mf.kind, mf.config), mf.state,
                                   str(mf.path)).to(precision.device)
    out = output_folder(out or mf.path.parent / f"eval_{data.dataset}",
                        "--out" if out else "the output folder (--out)")
    loader = eval_loader(data, mf.config.image_size, batch, precision.device)
    result = {"checkpoint": str(mf.path), "model": mf.name, "kind": mf.kind,
              "dataset": data.dataset, **run_eval(model, loader, precision, info.num_classes)}
    classes = mf.class_names or list(info.classes) or class_names(loader, info.num_classes)
    result["classes"] = classes
    figures = []
    if "confusion" in result:
        plot_confusion(out / "confusion.png", result["confusion"], classes)
        figures.append(str(out / "confusion.png"))
    if result["expert_share_per_class"]:
        plot_experts(out / "experts.png", result["expert_share_per_class"], classes)
        figures.append(str(out / "experts.png"))
    result["figures"] = figures
    write_json(out / "eval.json", result, indent=None)
    return result


def evaluate_onnx_file(path: Path, overrides, out) -> dict:
    """An ONNX export on its run's test split with ONNX Runtime (CPU)."""
    from mlit.export_onnx import evaluate_onnx, read_onnx

    mf = read_onnx(path)
    if mf.kind not in modelfile.CLASSIFIER_KINDS:
        raise CheckpointError(f"{path} holds a {mf.kind} model: mlit.eval runs ONNX "
                              "classifiers")
    data, _, batch = file_settings(mf, overrides)
    info = dataset_info(data)
    out = output_folder(out or path.parent / f"eval_{data.dataset}",
                        "--out" if out else "the output folder (--out)")
    loader = eval_loader(data, mf.config.image_size, batch, torch.device("cpu"))
    result = {"checkpoint": str(path), "model": mf.name, "kind": f"{mf.kind}, ONNX Runtime",
              "dataset": data.dataset, **evaluate_onnx(path, loader, info.num_classes,
                                mf.config.experts_per_layer())}
    classes = mf.class_names or list(info.classes) or class_names(loader, info.num_classes)
    result["classes"] = classes
    plot_confusion(out / "confusion.png", result["confusion"], classes)
    result["figures"] = [str(out / "confusion.png")]
    write_json(out / "eval.json", result, indent=None)
    return result


def summary_lines(r: dict) -> list[str]:
    lines = [f"{r['checkpoint']}: {r['model']} ({r['kind']}); {r['dataset']} test split, "
             f"{r['images']} images"]
    if r["top1"] is not None:
        acc = r["per_class_acc"]
        seen = [(a, i) for i, a in enumerate(acc) if a is not None]
        worst, best = min(seen), max(seen)
        names = r.get("classes") or []

        def name(i: int) -> str:
            return f"class {i}: {names[i]}" if len(names) > i and names[i] != str(i) else \
                f"class {i}"
        lines.append(f"top-1 {r['top1']:.4f}  top-5 {r['top5']:.4f}  loss {r['loss']:.4f}")
        lines.append(f"per-class accuracy: lowest {worst[0]:.3f} ({name(worst[1])}), highest "
                     f"{best[0]:.3f} ({name(best[1])})")
    else:
        parts = "  ".join(f"{k} {r[k]:.4f}" for k in ("loss", "masked", "unmasked") if k in r)
        lines.append(parts)
    for i, share in enumerate(r["expert_share"]):
        lines.append(f"MoE layer {i:2d}: expert shares " + " ".join(f"{s:.2f}" for s in share))
    lines.append("wrote " + ", ".join(r["figures"] + [str(Path(r["figures"][0]).parent /
                                                          "eval.json")]) if r["figures"] else "")
    return lines


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
    result = evaluate_file(args.checkpoint, args.overrides, args.out)
    if args.json:
        print(json.dumps({k: v for k, v in result.items()
                          if k not in ("confusion", "expert_share_per_class")}))
    else:
        print("\n".join(line for line in summary_lines(result) if line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
