"""How a layer's experts share their SwiGLU projections (paper Table 9): the one declaration
that the PyTorch mixtures, the Triton kernel, the model and the ONNX graph read.

Each expert is E_e(x) = (silu(x W + b) * (x V + c)) W2 + b2 and owns one of the three
projections; the other two are shared by the layer's experts:

    v_w2  each expert owns W (the projection under the swish); V and W2 are shared
    w_w2  each expert owns V; W and W2 are shared (the swish is on the shared side)
    w_v   each expert owns W2; W and V are shared (one hidden layer, E output projections)

Where W2 is shared (v_w2, w_w2) the gates factor inside it, y = W2(common * sum_e g_e own_e),
which is what the Triton kernel fuses; w_v has no single hidden activation to fuse.
Importable without Triton, like mlit.kernels.support: the model asks before it loads the kernel.
"""

from __future__ import annotations

from typing import NamedTuple


class Arrangement(NamedTuple):
    shared: str  # its name: the two projections the experts share
    owned: str  # the one each expert owns: "w" (under the swish), "v" or "w2"

    @property
    def w2_shared(self) -> bool:
        """The gates factor inside a shared W2 (one hidden activation: the kernel's case)."""
        return self.owned != "w2"

    @property
    def swish_on_own(self) -> bool:
        """The swish is on each expert's own projection (v_w2), not on the shared one."""
        return self.owned == "w"


ARRANGEMENTS = {a.shared: a for a in (Arrangement("v_w2", "w"), Arrangement("w_w2", "v"),
                                      Arrangement("w_v", "w2"))}
SHARED = tuple(ARRANGEMENTS)  # the names, the paper's default first


def owns_w2(shared: str) -> bool:
    """Each expert owns W2 (w_v): not ARRANGEMENTS[shared].w2_shared, in a form TorchScript
    compiles."""
    return shared == "w_v"


def own_and_common(shared: str, w, b, v, c):
    """(own weight, own bias, common weight, common bias, swish on the own side) of an
    arrangement whose W2 is shared, from (W, b, V, c) in mlit.model.dispatch's order. Read
    off the name rather than the table so that TorchScript compiles it (a scripted model's
    dense mixture calls it); tests/test_moe.py holds it to ARRANGEMENTS."""
    if shared == "v_w2":  # owns W, under the swish
        return w, b, v, c, True
    return v, c, w, b, False  # w_w2: owns V; the swish is on the shared W
