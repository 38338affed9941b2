"""What the Triton kernel serves, importable without Triton (mlit.model.dispatch asks before
it imports the kernel): the sharing arrangements its algebra covers and the dtype it runs in.
"""

from __future__ import annotations

import torch

from mlit.kernels.arrangements import ARRANGEMENTS

# The kernel needs W2 shared (a single hidden activation to write), so it serves those
# arrangements (v_w2, w_w2); the value is its SWISH_SHARED switch: whether the swish sits on
# the shared projection (w_w2) rather than on each expert's own (v_w2).
TRITON_ARRANGEMENTS = {name: not a.swish_on_own for name, a in ARRANGEMENTS.items()
                       if a.w2_shared}


def kernel_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the Triton kernel runs in, and mlit.model.mixtures' RoutedProjection:
    autocast's where it is on (custom ops are not autocast by themselves, and a Function's
    backward runs in the dtypes its forward saved)."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype
