"""Whether the model is being recorded as a graph (torch.fx, torch.jit.trace, torch.export)
rather than run. The eager-only parts step aside then: the mixture's routed shapes, which a
graph cannot hold (mlit/model/dispatch.py), hand-written backwards, which a graph would keep
as opaque calls (mlit/model/mixtures.py), and input checks, whose shapes are symbols there."""

from __future__ import annotations

import torch

try:  # fx's symbolic tracing alone (newer torch; the older name also answers under export)
    from torch.fx._symbolic_trace import is_fx_symbolic_tracing as is_fx_tracing
except ImportError:
    from torch.fx._symbolic_trace import is_fx_tracing

__all__ = ["capturing_graph", "is_fx_tracing"]


def capturing_graph() -> bool:
    """Whether torch.fx, torch.jit.trace or torch.export is recording the model as a graph."""
    return (torch.jit.is_tracing() or is_fx_tracing()
            or torch.compiler.is_exporting())
