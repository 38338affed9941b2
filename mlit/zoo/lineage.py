"""Lineage recovery on a zoo (the ViT model-zoo paper, Appendix B and Table 3): populations of
backbones and their descendants built per experiment, and MoTHeR's recovered trees scored
against the true ones (mlit/zoo/mother.py). A part of ZooAnalysis (mlit/zoo/analysis.py).
"""

from __future__ import annotations

import numpy as np
import torch

from mlit.zoo import mother, stats

# the paper's Table 3: children that differ from each other in one of these
MOTHER_EXPERIMENTS = ("epochs", "head_seed", "lr", "head", "optimizer")


class Lineage:
    def variants(self, backbone, experiment: str) -> list:
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
