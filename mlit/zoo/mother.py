"""MoTHeR lineage recovery (Horwitz et al. 2024; the ViT model-zoo paper, Appendix B).

1. k-means on the weight vectors (L2 distance) groups descendants of one ancestor.
2. Per cluster, M = d_c + lambda * mean(d_c) * T + diag(inf), T_ij = 1 where kurtosis_i >
   kurtosis_j. M_ij is the cost of "j is the parent of i": kurtosis falls during
   fine-tuning, so a child more kurtotic than its parent pays the extra term.
3. The minimum directed spanning tree (networkx's minimum spanning arborescence) of each
   cluster gives every model but the root its parent.
Scores: accuracy and F1 of the predicted adjacency matrix (parent, child) against the truth.
"""

from __future__ import annotations

import networkx as nx
import numpy as np


def pairwise_distances(vectors: np.ndarray) -> np.ndarray:
    sq = (vectors**2).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * vectors @ vectors.T, 0.0)
    np.fill_diagonal(d2, 0.0)
    return np.sqrt(d2)


def cluster(vectors: np.ndarray, n_clusters: int, seed: int = 0) -> np.ndarray:
    from sklearn.cluster import KMeans

    if n_clusters == 1:
        return np.zeros(len(vectors), dtype=int)
    return KMeans(n_clusters=n_clusters, n_init=10, random_state=seed).fit_predict(vectors)


def cost_matrix(distances: np.ndarray, kurtosis: np.ndarray, lam: float) -> np.ndarray:
    n = len(distances)
    mean_distance = distances[~np.eye(n, dtype=bool)].mean() if n > 1 else 0.0
    T = (kurtosis[:, None] > kurtosis[None, :]).astype(float)
    M = distances + lam * mean_distance * T
    np.fill_diagonal(M, np.inf)
    return M


def tree_parents(M: np.ndarray) -> list[int | None]:
    """Parent of every node (None for the root) from the minimum spanning arborescence."""
    n = len(M)
    if n == 1:
        return [None]
    graph = nx.DiGraph()
    graph.add_nodes_from(range(n))
    for i in range(n):
        for j in range(n):
            if i != j:
                graph.add_edge(j, i, weight=float(M[i, j]))  # j -> i: j is i's parent
    tree = nx.minimum_spanning_arborescence(graph, attr="weight")
    parents: list[int | None] = [None] * n
    for parent, child in tree.edges():
        parents[child] = parent
    return parents


def recover_lineage(vectors: np.ndarray, kurtosis: np.ndarray, n_clusters: int,
                    lam: float = 0.3, seed: int = 0) -> list[int | None]:
    """Predicted parent index of every model (None for the roots)."""
    labels = cluster(vectors, n_clusters, seed)
    distances = pairwise_distances(vectors)
    parents: list[int | None] = [None] * len(vectors)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        sub = cost_matrix(distances[np.ix_(members, members)], kurtosis[members], lam)
        for local_child, local_parent in enumerate(tree_parents(sub)):
            if local_parent is not None:
                parents[members[local_child]] = int(members[local_parent])
    return parents


def adjacency(parents: list[int | None]) -> np.ndarray:
    n = len(parents)
    A = np.zeros((n, n), dtype=bool)
    for child, parent in enumerate(parents):
        if parent is not None:
            A[parent, child] = True
    return A


def lineage_scores(predicted: list[int | None], truth: list[int | None]) -> dict[str, float]:
    """Accuracy over the off-diagonal entries of the adjacency matrix, and F1 of its edges."""
    P, T = adjacency(predicted), adjacency(truth)
    off = ~np.eye(len(P), dtype=bool)
    tp = int((P & T).sum())
    fp, fn = int((P & ~T).sum()), int((~P & T).sum())
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
    return {"accuracy": float((P == T)[off].mean()), "f1": f1, "edges": int(T.sum())}
