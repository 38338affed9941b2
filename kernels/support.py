"""What the Triton kernel serves, importable without Triton (mlit.model.dispatch asks before
it imports the kernel): the sharing arrangements its algebra covers and the dtype it runs in.
"""

from __future__ import annotations

import torch

# The kernel needs W2 shared (a single hidden activation to write), so it serves these two
# arrangements of paper Table 9; the value says whether the swish sits on the shared
# projection (w_w2: W shared, V_e own) rather than on the expert's own (v_w2).
TRITON_ARRANGEMENTS = {"v_w2": False, "w_w2": True}  # shared -> SWISH_SHARED


def kernel_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the Triton kernel runs in: autocast's where it is on (custom ops are not
    autocast by themselves)."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype
