"""The analyses a zoo exists for (the ViT model-zoo paper, sections 3-4 and
Appendix B; docs/zoo.md).

    ZooAnalysis(zoo_dir).run() -> dict
        table1     backbones per pre-training variant: accuracy, weight statistics, within-
                   cluster (backbone to its fine-tunes) and between-cluster L2 distances
        table2     fine-tunes per generating factor and overall: accuracy, generalisation gap,
                   pairwise agreement, skewness, kurtosis, L2 norm, L2 distance to the ancestor
        table6     fine-tunes per pre-training x optimizer x head x lr jointly: min, max,
                   mean and std of accuracy, generalisation gap, agreement
        epoch_averaging, longitudinal   uniform averages over the last `window` epochs
        soups, greedy_soups             averages across fine-tunes
        mother                          lineage recovery experiments (the paper's Table 3)

`min_acc` refines the zoo as the paper's Table 2 does: every analysis of fine-tunes keeps
those whose final test accuracy reaches it (backbones are all kept: MAE and SimCLR backbones
have no accuracy).

Accuracies of zoo checkpoints come from their result.json (the runner's evaluation); averaged
and souped models are evaluated with the same code (mlit.training.engine.evaluate) on the test split.
Which tensors each statistic uses: see mlit/zoo/stats.py.
"""

from __future__ import annotations

import itertools
import json
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mlit.data.loaders import eval_loader
from mlit.errors import BadInput
from mlit.files import checkpoint as ckpt
from mlit.model.config import MLiTConfig
from mlit.model.encoder import MLiT
from mlit.population import layout
from mlit.recipe.schema import Data
from mlit.training.engine import evaluate, predict, select_device, select_precision
from mlit.zoo import stats
from mlit.zoo.averaging import Averaging
from mlit.zoo.lineage import Lineage

FACTORS = ("pretraining", "head", "optimizer", "lr")  # Table 2's rows
JOINT = ("pretraining", "optimizer", "head", "lr")  # Table 6's rows, all factors at once


def mean_std(values) -> dict[str, float] | None:
    values = [float(v) for v in values]
    if not values:
        return None
    return {"mean": statistics.fmean(values),
            "std": statistics.pstdev(values) if len(values) > 1 else 0.0, "n": len(values)}


@dataclass
class ZooModel:
    path: str
    dir: Path
    config: dict
    results: list[dict]
    epochs: list[int]
    _states: dict = field(default_factory=dict, repr=False)

    @property
    def factors(self) -> dict:
        return self.config["factors"]

    @property
    def backbone(self) -> str | None:
        return self.config["backbone"]

    @property
    def last(self) -> dict:
        return self.results[-1]

    def state(self, epoch: int | None = None) -> dict:
        epoch = self.epochs[-1] if epoch is None else epoch
        if epoch not in self._states:
            state = ckpt.load(ckpt.epoch_path(self.dir, epoch))["model"]
            if epoch != self.epochs[-1]:
                return state  # only the final state stays in memory
            self._states[epoch] = state
        return self._states[epoch]

    def test_acc(self, epoch: int) -> float | None:
        return next((r.get("test_acc") for r in self.results if r["epoch"] == epoch), None)


class ZooAnalysis(Averaging, Lineage):
    """The zoo's finished models, read once, and every analysis of them; `run()` gives all.
    Weight averaging and soups are mlit/zoo/averaging.py's, lineage recovery
    mlit/zoo/lineage.py's."""

    def __init__(self, zoo_dir: str | Path, device: str = "auto", batch_size: int = 512,
                 window: int = 5, mother_lambda: float = 0.3,
                 longitudinal_models: int | None = None, min_acc: float | None = None,
                 mother_children: int = 12):
        self.zoo_dir = Path(zoo_dir)
        self.window, self.mother_lambda = window, mother_lambda
        self.mother_children = mother_children
        self.longitudinal_models = longitudinal_models
        self.skipped: list[str] = []
        self.models: dict[str, ZooModel] = {}
        for model_dir in layout.model_dirs(self.zoo_dir):
            path = str(model_dir.relative_to(self.zoo_dir))
            state = layout.status(model_dir)
            if state != "done":
                self.skipped.append(path)
                if state == "damaged":
                    why = layout.problem(model_dir) or f"{model_dir / 'status.json'} is damaged"
                    print(f"warning: skipped {path}: {why}", file=sys.stderr)
                continue
            cfg = json.loads((model_dir / "config.json").read_text())
            self.models[path] = ZooModel(path, model_dir, cfg, layout.read_results(model_dir),
                                         layout.epochs_saved(model_dir))
        self.backbones = [m for m in self.models.values() if m.backbone is None]
        finished = [m for m in self.models.values() if m.backbone in self.models]
        if not finished:
            raise BadInput(f"{self.zoo_dir}: no finished fine-tunes to analyse")
        self.finetunes = finished
        self.refined = None
        if min_acc is not None:
            self.finetunes = [m for m in finished if m.last["test_acc"] >= min_acc]
            self.refined = {"min_acc": min_acc, "kept": len(self.finetunes),
                            "finished": len(finished)}
            if not self.finetunes:
                best = max(m.last["test_acc"] for m in finished)
                raise BadInput(f"--min-acc {min_acc}: no fine-tune reaches it (the best "
                               f"final test accuracy is {best:.4f})")
        self.precision = select_precision(select_device(device), "fp32")
        self.batch_size = batch_size
        self._loader = None
        self._preds: dict[str, torch.Tensor] = {}
        self._weight_stats: dict[str, dict[str, float]] = {}
        self._ancestor_distance: dict[str, float] = {}

    # -- evaluation through the runner's code ------------------------------------------------
    @property
    def loader(self):
        if self._loader is None:
            recipe = self.finetunes[0].config["recipe"]
            data = Data(**{**recipe["data"], "num_workers": 0})
            self._loader = eval_loader(data, self.finetunes[0].config["model"]["image_size"],
                                       self.batch_size, self.precision.device)
        return self._loader

    def classifier(self, model: ZooModel, state: dict) -> MLiT:
        fields = {k: v for k, v in model.config["model"].items() if k != "name"}
        net = MLiT(MLiTConfig(**fields))
        net.load_state_dict(state)
        return net.to(self.precision.device)

    def accuracy(self, model: ZooModel, state: dict) -> float:
        return evaluate(self.classifier(model, state), self.loader, self.precision)["acc"]

    def predictions(self, model: ZooModel) -> torch.Tensor:
        if model.path not in self._preds:
            net = self.classifier(model, model.state())
            self._preds[model.path] = predict(net, self.loader, self.precision)[0]
        return self._preds[model.path]

    # -- Table 1 and Table 2 ----------------------------------------------------------------
    def weight_stats(self, model: ZooModel) -> dict[str, float]:
        """Once per model: a fine-tune appears in one row per factor and in 'all'."""
        if model.path not in self._weight_stats:
            self._weight_stats[model.path] = stats.weight_stats(model.state())
        return self._weight_stats[model.path]

    def ancestor_distance(self, model: ZooModel) -> float:
        """L2 from a fine-tune to its backbone: Table 1's within-cluster distances and
        Table 2's distance to the ancestor are the same numbers."""
        if model.path not in self._ancestor_distance:
            self._ancestor_distance[model.path] = stats.l2_distance(
                model.state(), self.models[model.backbone].state())
        return self._ancestor_distance[model.path]

    def children(self, backbone: ZooModel) -> list[ZooModel]:
        return [m for m in self.finetunes if m.backbone == backbone.path]

    def table1(self) -> dict:
        rows = {}
        pretrainings = sorted({b.factors["pretraining"] for b in self.backbones})
        for pretraining in pretrainings + ["all"]:
            group = [b for b in self.backbones
                     if pretraining in ("all", b.factors["pretraining"])]
            ws = [self.weight_stats(b) for b in group]
            within = [self.ancestor_distance(c) for b in group for c in self.children(b)]
            between = [stats.l2_distance(a.state(), b.state())
                       for a, b in itertools.combinations(group, 2)]
            rows[pretraining] = {
                "models": len(group),
                "accuracy": mean_std(b.last["test_acc"] for b in group if "test_acc" in b.last),
                **{k: mean_std(w[k] for w in ws) for k in ("skewness", "kurtosis", "l2_norm")},
                "within_cluster_l2": mean_std(within), "between_cluster_l2": mean_std(between)}
        return rows

    def finetune_row(self, group: list[ZooModel]) -> dict:
        ws = [self.weight_stats(m) for m in group]
        pairs = itertools.combinations(group, 2)
        return {
            "models": len(group),
            "accuracy": mean_std(m.last["test_acc"] for m in group),
            "generalisation_gap": mean_std(m.last["train_acc"] - m.last["test_acc"]
                                           for m in group),
            "agreement": mean_std(stats.agreement(self.predictions(a), self.predictions(b))
                                  for a, b in pairs),
            **{k: mean_std(w[k] for w in ws) for k in ("skewness", "kurtosis", "l2_norm")},
            "l2_to_ancestor": mean_std(self.ancestor_distance(m) for m in group)}

    def table2(self) -> dict:
        rows = {}
        for factor in FACTORS:
            for value in sorted({m.factors[factor] for m in self.finetunes}, key=str):
                group = [m for m in self.finetunes if m.factors[factor] == value]
                rows[f"{factor}={value}"] = self.finetune_row(group)
        rows["all"] = self.finetune_row(self.finetunes)
        return rows

    def table6(self) -> list[dict]:
        """The paper's Table 6: accuracy broken down by every factor jointly (head seeds and
        the backbones of one variant pooled), with its spread, gap and agreement."""
        groups: dict[tuple, list[ZooModel]] = {}
        for m in self.finetunes:
            groups.setdefault(tuple(m.factors[f] for f in JOINT), []).append(m)
        rows = []
        for key in sorted(groups, key=lambda k: tuple(str(v) for v in k)):
            group = groups[key]
            accs = [m.last["test_acc"] for m in group]
            rows.append({**dict(zip(JOINT, key)), "models": len(group), "min": min(accs),
                         "max": max(accs), "accuracy": mean_std(accs),
                         "generalisation_gap": mean_std(m.last["train_acc"] - m.last["test_acc"]
                                                        for m in group),
                         "agreement": mean_std(
                             stats.agreement(self.predictions(a), self.predictions(b))
                             for a, b in itertools.combinations(group, 2))})
        return rows

    def run(self) -> dict:
        return {"zoo": str(self.zoo_dir), "backbones": len(self.backbones),
                "finetunes": len(self.finetunes), "skipped_unfinished": self.skipped,
                "refined": self.refined, "window": self.window,
                "mother_lambda": self.mother_lambda, "mother_children": self.mother_children,
                "table1": self.table1(), "table2": self.table2(), "table6": self.table6(),
                "epoch_averaging": self.epoch_averaging(), "longitudinal": self.longitudinal(),
                "soups": self.soups(), "greedy_soups": self.greedy_soups(),
                "mother": self.mother()}
