"""Weight averaging across a zoo (the ViT model-zoo paper, Figures 2-3): the last epochs of
one fine-tune averaged, and soups of fine-tunes that share all factors but one, uniform or
greedy (Wortsman et al. 2022). A part of ZooAnalysis (mlit/zoo/analysis.py), whose models,
`accuracy` and `children` it uses; every averaged model is evaluated on the test split.
"""

from __future__ import annotations

import statistics

from mlit.zoo import stats

SOUP_FACTORS = ("head_seed", "lr", "optimizer", "pretraining_seed", "head")


class Averaging:
    def trained_epochs(self, model) -> list[int]:
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
            groups: dict[tuple, list] = {}
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
