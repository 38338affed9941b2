"""Weight-space statistics, behavioural agreement and weight averaging for zoo analyses.

Which tensors: weight statistics (skewness, kurtosis, L2 norm) and distances use one vector
per model, every floating-point tensor whose name starts with `encoder.` (patch embedding,
positional embedding, every layer's attention, gate, experts and norms, the final norm),
flattened in state-dict order. Heads are left out: linear and MLP heads differ in shape and
a pre-trained ancestor has none (or another task's), so only the shared encoder compares.
Averaging, in contrast, averages every floating-point tensor, heads included.
"""

from __future__ import annotations

import torch

ENCODER = "encoder."


def weight_vector(state: dict, prefix: str = ENCODER) -> torch.Tensor:
    parts = [t.detach().reshape(-1).double() for k, t in state.items()
             if k.startswith(prefix) and t.is_floating_point()]
    if not parts:
        raise ValueError(f"no floating-point tensors under {prefix!r}")
    return torch.cat(parts)


def skewness(v: torch.Tensor) -> float:
    """Fisher-Pearson coefficient m3 / m2^1.5 (scipy.stats.skew, bias=True)."""
    d = v.double() - v.double().mean()
    return float((d**3).mean() / (d**2).mean() ** 1.5)


def kurtosis(v: torch.Tensor) -> float:
    """Excess kurtosis m4 / m2^2 - 3 (scipy.stats.kurtosis, fisher=True, bias=True)."""
    d = v.double() - v.double().mean()
    return float((d**4).mean() / (d**2).mean() ** 2 - 3.0)


def weight_stats(state: dict) -> dict[str, float]:
    v = weight_vector(state)
    return {"skewness": skewness(v), "kurtosis": kurtosis(v), "l2_norm": float(v.norm())}


def l2_distance(a: dict, b: dict) -> float:
    return float((weight_vector(a) - weight_vector(b)).norm())


def agreement(pred_a: torch.Tensor, pred_b: torch.Tensor) -> float:
    """Share of test images on which two models predict the same class."""
    if pred_a.shape != pred_b.shape:
        raise ValueError("agreement needs predictions on the same images")
    return float((pred_a == pred_b).double().mean())


def same_architecture(states: list[dict]) -> bool:
    first = states[0]
    return all(s.keys() == first.keys() and all(s[k].shape == first[k].shape for k in first)
               for s in states[1:])


def average_states(states: list[dict], weights: list[float] | None = None) -> dict:
    """Uniform (or weighted) average of every floating-point tensor; other tensors (integer
    buffers) come from the first state. Only models of one architecture can be averaged."""
    if not states:
        raise ValueError("nothing to average")
    if not same_architecture(states):
        raise ValueError("weight averaging needs models of the same architecture "
                         "(same tensor names and shapes)")
    weights = weights or [1.0 / len(states)] * len(states)
    out = {}
    for k, t in states[0].items():
        if t.is_floating_point():
            acc = sum(w * s[k].double() for w, s in zip(weights, states))
            out[k] = acc.to(t.dtype)
        else:
            out[k] = t.clone()
    return out
