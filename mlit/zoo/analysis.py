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
and souped models are evaluated with the same code (mlit.engine.evaluate) on the test split.
Which tensors each statistic uses: see mlit/zoo/stats.py.
"""

from __future__ import annotations

import itertools
import json
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mlit import checkpoint as ckpt
from mlit.config import Data
from mlit.data.loaders import eval_loader
from mlit.encoder import MLiT
from mlit.engine import evaluate, predict, select_precision
from mlit.model_config import MLiTConfig
from mlit.engine import select_device
from mlit.zoo import layout, mother, stats

FACTORS = ("pretraining", "head", "optimizer", "lr")  # Table 2's rows
JOINT = ("pretraining", "optimizer", "head", "lr")  # Table 6's rows, all factors at once
SOUP_FACTORS = ("head_seed", "lr", "optimizer", "pretraining_seed", "head")
# the paper's Table 3: children that differ from each other in one of these
MOTHER_EXPERIMENTS = ("epochs", "head_seed", "lr", "head", "optimizer")


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


class ZooAnalysis:
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
            raise ValueError(f"{self.zoo_dir}: no finished fine-tunes to analyse")
        self.finetunes = finished
        self.refined = None
        if min_acc is not None:
            self.finetunes = [m for m in finished if m.last["test_acc"] >= min_acc]
            self.refined = {"min_acc": min_acc, "kept": len(self.finetunes),
                            "finished": len(finished)}
            if not self.finetunes:
                best = max(m.last["test_acc"] for m in finished)
                raise ValueError(f"--min-acc {min_acc}: no fine-tune reaches it (the best "
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
        kinds = sorted({b.factors["pretraining"] for b in self.backbones})
        for kind in kinds + ["all"]:
            group = [b for b in self.backbones if kind in ("all", b.factors["pretraining"])]
            ws = [self.weight_stats(b) for b in group]
            within = [self.ancestor_distance(c) for b in group for c in self.children(b)]
            between = [stats.l2_distance(a.state(), b.state())
                       for a, b in itertools.combinations(group, 2)]
            rows[kind] = {
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

    # -- averaging ---------------------------------------------------------------------------
    def trained_epochs(self, model: ZooModel) -> list[int]:
        return [e for e in model.epochs if e > 0]

    def epoch_averaging(self) -> list[dict]:
        """Figure 2a: the uniform average of the last `window` epochs vs the best of them."""
        rows = []
        for m in self.finetunes:
            last = self.trained_epochs(m)[-self.window:]
            averaged = self.accuracy(m, stats.average_states([m.state(e) for e in last]))
            best = max(m.test_acc(e) for e in last)
            rows.append({"model": m.path, "epochs": last, "averaged_acc": averaged,
                         "best_individual_acc": best, "gain": averaged - best,
                         "generalisation_gap": m.last["train_acc"] - m.last["test_acc"]})
        return rows

    def longitudinal(self) -> dict:
        """Figure 3: from epoch `window` on, the average of the previous `window` epochs
        against the single epoch; min / mean / max over models, per epoch."""
        per_epoch: dict[int, dict[str, list[float]]] = {}
        for m in self.finetunes[: self.longitudinal_models]:
            epochs = self.trained_epochs(m)
            for i in range(self.window - 1, len(epochs)):
                window = epochs[i - self.window + 1: i + 1]
                acc = self.accuracy(m, stats.average_states([m.state(e) for e in window]))
                slot = per_epoch.setdefault(epochs[i], {"averaged": [], "individual": []})
                slot["averaged"].append(acc)
                slot["individual"].append(m.test_acc(epochs[i]))
        return {e: {k: {"min": min(v), "mean": statistics.fmean(v), "max": max(v)}
                    for k, v in slots.items()} for e, slots in sorted(per_epoch.items())}

    def soups(self) -> list[dict]:
        """Figure 2b: uniform soups of final fine-tunes that share every factor but one."""
        rows = []
        for varied in SOUP_FACTORS:
            # varied == pretraining_seed: fine-tunes of sibling backbones of one variant
            others = [f for f in self.finetunes[0].factors if f != varied]
            groups: dict[tuple, list[ZooModel]] = {}
            for m in self.finetunes:
                groups.setdefault(tuple(m.factors[f] for f in others), []).append(m)
            for key, group in groups.items():
                if len(group) < 2:
                    continue
                states = [m.state() for m in group]
                row = {"varied": varied, "shared": dict(zip(others, key)),
                       "models": [m.path for m in group],
                       "max_individual_acc": max(m.last["test_acc"] for m in group)}
                if not stats.same_architecture(states):
                    row["skipped"] = "different architectures (e.g. linear vs MLP head)"
                else:
                    row["soup_acc"] = self.accuracy(group[0], stats.average_states(states))
                    row["gain"] = row["soup_acc"] - row["max_individual_acc"]
                rows.append(row)
        return rows

    def greedy_soups(self) -> list[dict]:
        """Wortsman et al. 2022: per backbone and head, add fine-tunes in order of accuracy
        while the soup's test accuracy does not drop."""
        rows = []
        for b in self.backbones:
            for head in sorted({m.factors["head"] for m in self.children(b)}):
                ranked = sorted((m for m in self.children(b) if m.factors["head"] == head),
                                key=lambda m: -m.last["test_acc"])
                soup, soup_acc = [ranked[0]], ranked[0].last["test_acc"]
                for candidate in ranked[1:]:
                    acc = self.accuracy(candidate, stats.average_states(
                        [m.state() for m in soup + [candidate]]))
                    if acc >= soup_acc:
                        soup, soup_acc = soup + [candidate], acc
                rows.append({"backbone": b.path, "head": head, "candidates": len(ranked),
                             "ingredients": [m.path for m in soup], "soup_acc": soup_acc,
                             "best_individual_acc": ranked[0].last["test_acc"]})
        return rows

    # -- lineage ------------------------------------------------------------------------------
    def variants(self, backbone: ZooModel, experiment: str) -> list[ZooModel]:
        """The backbone's fine-tunes that differ from its first one only in `experiment`'s
        factor (the first one alone for the epochs experiment)."""
        kids = self.children(backbone)
        if not kids or experiment == "epochs":
            return kids[:1]
        ref = kids[0]
        return [m for m in kids if all(m.factors[f] == ref.factors[f]
                                       for f in m.factors if f != experiment)]

    def lineage_population(self, experiment: str):
        """(labels, states, true parent index, children per backbone) for one MoTHeR
        experiment, as the paper's Appendix B builds it: every backbone gets the same number
        of descendants, `mother_children` (12) where the zoo has them; a factor with fewer
        values is padded with epoch checkpoints, each variant a chain of evenly spaced epochs
        ending at its last (so the epochs experiment is one such chain)."""
        groups = [(b, v) for b in self.backbones if (v := self.variants(b, experiment))]
        if not groups:
            return [], [], [], 0
        children = min([self.mother_children] + [
            len(v) * min(len(self.trained_epochs(m)) for m in v) for _, v in groups])
        labels, states, parents = [], [], []
        for b, variants in groups:
            root = len(labels)
            labels.append(b.path)
            states.append(b.state())
            parents.append(None)
            for i, m in enumerate(variants):
                n = children // len(variants) + (i < children % len(variants))
                trained = self.trained_epochs(m)
                prev = root
                for j in range(n):
                    epoch = trained[round((j + 1) * len(trained) / n) - 1]
                    labels.append(f"{m.path}@{epoch}")
                    states.append(m.state(epoch))
                    parents.append(prev)
                    prev = len(labels) - 1
        return labels, states, parents, children

    def mother(self) -> dict:
        rows = {}
        for experiment in MOTHER_EXPERIMENTS:
            if experiment != "epochs" and len({m.factors[experiment]
                                               for m in self.finetunes}) < 2:
                continue  # the zoo does not vary this factor
            labels, states, truth, children = self.lineage_population(experiment)
            roots = sum(p is None for p in truth)
            if children < 1:
                continue
            vectors = np.stack([stats.weight_vector(s).float().numpy() for s in states])
            kurt = np.array([stats.kurtosis(torch.from_numpy(v)) for v in vectors])
            predicted = mother.recover_lineage(vectors, kurt, roots, self.mother_lambda)
            rows[experiment] = {"models": len(labels), "trees": roots, "children": children,
                                **mother.lineage_scores(predicted, truth)}
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
