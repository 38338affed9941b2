"""SoViT's scaling law for one shape dimension x (Alabdulmohsin et al. 2023, "Getting ViT in
Shape"), and the compute-optimal x it implies.

    f(x, t) = alpha * x^(-a) + (beta * x^b + xi) * t^(-c) + eps

f is the error (1 - top-1, or a loss), t the training compute in FLOPs. For a fixed t the
error is smallest at

    x*(t) = (a * alpha * t^c / (b * beta))^(1 / (a + b)),   so x* grows as t^(c / (a + b)).

The fit: x and t are divided by their geometric means (so every parameter is of order one),
then scipy's least_squares minimises a Huber loss of the residuals in log space (relative
errors, robust to an outlying run), within bounds (alpha, beta, xi >= 0; 0 <= a, b, c <= 4;
0 <= eps < the smallest error), from a grid of starting points; the best fit wins. A fit that
cannot be trusted raises UntrustedFit instead of giving a number: too few points for seven
parameters, too few distinct x or t, an exponent that runs to its bound (the points do not
determine it), or an optimum that does not exist (a, b or a fitted amplitude at zero: the
error then only falls, or only rises, with x).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

NAMES = ("alpha", "a", "beta", "b", "xi", "c", "eps")
EXPONENT_BOUND = 4.0
DEGENERATE = 1e-3  # an exponent or a normalised amplitude below this is "at zero"


class UntrustedFit(ValueError):
    """A fit whose numbers would mislead; the message says why."""


@dataclass
class Fit:
    dim: str
    points: int
    params: dict[str, float]  # in the data's own units
    exponent: float  # x* ~ t^exponent
    rms_log_residual: float
    x_range: tuple[float, float]
    t_range: tuple[float, float]

    def error(self, x, t):
        p = self.params
        x, t = np.asarray(x, float), np.asarray(t, float)
        return p["alpha"] * x ** -p["a"] + (p["beta"] * x ** p["b"] + p["xi"]) * \
            t ** -p["c"] + p["eps"]

    def optimal(self, t: float) -> float:
        p = self.params
        return (p["a"] * p["alpha"] * t ** p["c"] / (p["b"] * p["beta"])) ** (
            1 / (p["a"] + p["b"]))

    def as_dict(self, compute: float | None = None) -> dict:
        out = {"dim": self.dim, "points": self.points, "params": self.params,
               "exponent": self.exponent, "rms_log_residual": self.rms_log_residual}
        if compute is not None:
            x = self.optimal(compute)
            out.update(compute=compute, optimal=x,
                       extrapolated=not self.x_range[0] <= x <= self.x_range[1])
        return out


def law(p: np.ndarray, x: np.ndarray, t: np.ndarray) -> np.ndarray:
    alpha, a, beta, b, xi, c, eps = p
    return alpha * x ** -a + (beta * x ** b + xi) * t ** -c + eps


def fit_law(x, t, error, dim: str = "x", starts: int = 3) -> Fit:
    """Fit f(x, t) to points (x, t, error); UntrustedFit when the result would mislead."""
    from scipy.optimize import least_squares

    x, t, f = (np.asarray(v, dtype=float) for v in (x, t, error))
    if len(x) < len(NAMES) + 1:
        raise UntrustedFit(f"{len(x)} points for the law's {len(NAMES)} parameters (needs "
                           f"at least {len(NAMES) + 1})")
    if len(np.unique(x)) < 3 or len(np.unique(t)) < 2:
        raise UntrustedFit(f"{len(np.unique(x))} values of {dim} and {len(np.unique(t))} of "
                           "compute (needs at least 3 and 2)")
    if (f <= 0).any() or (x <= 0).any() or (t <= 0).any():
        raise UntrustedFit("errors, values and compute must all be positive")
    x_ref, t_ref = math.exp(np.log(x).mean()), math.exp(np.log(t).mean())
    xs, ts, log_f = x / x_ref, t / t_ref, np.log(f)
    low = np.zeros(7)
    high = np.array([np.inf, EXPONENT_BOUND, np.inf, EXPONENT_BOUND, np.inf, EXPONENT_BOUND,
                     f.min() * (1 - 1e-9)])

    def residuals(p):
        return np.log(np.maximum(law(p, xs, ts), 1e-300)) - log_f

    best = None
    scale = float(np.median(f))
    grid = np.linspace(0.2, 1.5, starts)
    for a, b, c in itertools.product(grid, grid, grid):
        p0 = np.array([scale / 3, a, scale / 3, b, scale / 3, c, f.min() / 2])
        result = least_squares(residuals, np.clip(p0, low, high), bounds=(low, high),
                               loss="huber", f_scale=0.05, max_nfev=2000)
        if best is None or result.cost < best.cost:
            best = result
    alpha, a, beta, b, xi, c, eps = best.x
    for name, value in (("a", a), ("b", b), ("c", c)):
        if value > EXPONENT_BOUND * (1 - 1e-3):
            raise UntrustedFit(f"the fitted {name} ran to its bound {EXPONENT_BOUND:g}: the "
                               f"points do not determine it, nor the exponent")
    for name, value in (("a", a), ("b", b)):
        if value < DEGENERATE:
            raise UntrustedFit(f"the fitted {name} is {value:.2g}: the error does not turn "
                               f"back up on one side of {dim}, so there is no optimum")
    for name, value in (("alpha", alpha), ("beta", beta)):
        if value < DEGENERATE * scale:
            raise UntrustedFit(f"the fitted {name} is {value:.2g}: one side of the trade-off "
                               f"vanishes, so there is no optimum {dim}")
    params = {"alpha": alpha * x_ref ** a, "a": a, "beta": beta * x_ref ** -b * t_ref ** c,
              "b": b, "xi": xi * t_ref ** c, "c": c, "eps": eps}
    rms = float(np.sqrt(np.mean(residuals(best.x) ** 2)))
    return Fit(dim, len(x), {k: float(v) for k, v in params.items()}, float(c / (a + b)), rms,
               (float(x.min()), float(x.max())), (float(t.min()), float(t.max())))


def points_for(records: list[dict], dim: str) -> tuple[list, list, list]:
    """(x, compute, error) of the records that carry `dim` and belong to its arm (records
    with an `arms` list, as `mlit.shape report` writes them; plain records all count)."""
    use = [r for r in records if dim in r and "compute" in r and "error" in r
           and dim in r.get("arms", [dim])]
    return [r[dim] for r in use], [r["compute"] for r in use], [r["error"] for r in use]
