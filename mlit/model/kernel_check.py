"""The Triton expert mixture against the PyTorch reference: output and every gradient.

One comparison serves three callers: the kernel tests (Triton's interpreter on the CPU),
`tools/gpu_check.py` (the real compiler on a GPU, fp32, fp16 and bf16), and the check that
`mlit.model.dispatch` runs on the first Triton dispatch on each device, before trusting a kernel
that may never have met that hardware.

16-bit kernels are compared with the float32 reference on the same (rounded) inputs, with
an error measured relative to each tensor's largest magnitude, so that a gradient summed over
many tokens is judged at its own scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mlit.errors import Fault, first_line
from mlit.model.mixtures import torch_expert_mixture

NAMES = ["y", "dx", "dgates", "dW", "db", "dV", "dc", "dW2", "db2"]
# largest |kernel - reference| / max |reference| allowed per tensor, per kernel dtype; fp32 is
# exact (ieee) math, the 16-bit ones round the inputs and the hidden activation they write
TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 4e-2}
SMALL_PROBLEM = (70, 32, 24, 4)  # (N, d, h, E): two token tiles, masked widths
SHAPES = {  # (N, d, h, E): the kernel tests' problems, real mLiT layers among them
    "tiny": (10, 16, 8, 3),
    "odd_widths": (37, 27, 13, 4),
    "mlit_s_first_layer": (150, 144, 144, 3),
    "mlit_s_last_layer": (145, 144, 72, 5),
    "mlit_xxs_last_layer": (70, 108, 27, 5),
}


def routed_inputs(N, d, h, E, k=2, avoid=None, seed=0, device="cpu"):
    """Tokens, top-k softmax gates and weights (float32); `avoid=(e, n)` keeps the first n
    tokens (a whole tile) away from expert e."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, d, generator=g)
    logits = torch.randn(N, E, generator=g)
    if avoid is not None:
        logits[: avoid[1], avoid[0]] = -1e9
    vals, idx = logits.topk(k, dim=1)
    gates = torch.zeros(N, E).scatter(1, idx, vals.softmax(1))
    weights = [torch.randn(E, d, h, generator=g) * d**-0.5, torch.randn(E, h, generator=g),
               torch.randn(h, d, generator=g) * d**-0.5, torch.randn(h, generator=g),
               torch.randn(d, h, generator=g) * h**-0.5, torch.randn(d, generator=g)]
    return [t.to(device) for t in (x, gates, *weights)]


def as_w_w2(inputs):
    """The same tensors as an input of shared=w_w2: the experts own V, share W and W2."""
    x, gates, w, b, v, c, w2, b2 = inputs
    return [x, gates, v, c, w, b, w2, b2]


def output_and_grads(fn, inputs, shared="v_w2"):
    """fn(*inputs, shared) and the gradients of a fixed linear loss on it, in NAMES' order;
    gate gradients count where routed (mlit.model.dispatch's contract)."""
    leaves = [t.clone().requires_grad_() for t in inputs]
    with torch.enable_grad():
        y = fn(*leaves, shared)
        upstream = torch.linspace(-1, 1, y.numel(), device=y.device).view_as(y).to(y.dtype)
        (y * upstream).sum().backward()
    grads = [leaf.grad for leaf in leaves]
    grads[1] = grads[1] * (inputs[1] > 0)
    return [y.detach(), *grads]


@dataclass
class Comparison:
    dtype: torch.dtype
    errors: dict[str, float]  # NAMES -> max |got - ref| / max |ref|

    @property
    def worst(self) -> tuple[str, float]:
        return max(self.errors.items(), key=lambda kv: kv[1])

    @property
    def passed(self) -> bool:
        return self.worst[1] <= TOLERANCE[self.dtype]


def compare(inputs, dtype: torch.dtype = torch.float32, shared: str = "v_w2") -> Comparison:
    """The Triton kernel in `dtype` against the float32 reference on the same rounded inputs
    (the gates stay float32, as the router gives them)."""
    from mlit.kernels.moe import triton_expert_mixture  # imports Triton: only when checked

    rounded = [t if i == 1 else t.to(dtype).float() for i, t in enumerate(inputs)]
    ref = output_and_grads(torch_expert_mixture, rounded, shared)
    got = output_and_grads(triton_expert_mixture,
                           [t if i == 1 else t.to(dtype) for i, t in enumerate(rounded)],
                           shared)
    errors = {}
    for name, a, b in zip(NAMES, ref, got):
        scale = a.abs().max().clamp(min=1e-6)
        errors[name] = float((b.float() - a).abs().max() / scale)
    return Comparison(dtype, errors)


class KernelFault(Fault):
    """The Triton kernel failed to build or disagreed with the reference on a device (exit 1
    under moe_impl=triton; under auto, a warning and the PyTorch implementation)."""

    def line(self) -> str:
        return f"{self}; stopped (moe_impl=auto would use torch there)"


def check_device(device: torch.device, dtype: torch.dtype, shared: str) -> None:
    """Raise KernelFault (one line: device, dtype, the error and its size) unless the kernel
    builds and matches the reference on SMALL_PROBLEM on `device`."""
    where = f"Triton MoE kernel on {device_name(device)}, {str(dtype).removeprefix('torch.')}"
    try:
        with torch.autocast(device.type, enabled=False):
            inputs = routed_inputs(*SMALL_PROBLEM, device=device)
            result = compare(as_w_w2(inputs) if shared == "w_w2" else inputs, dtype, shared)
    except Exception as err:  # a build or launch failure of any kind
        raise KernelFault(f"{where}: failed to run ({type(err).__name__}: "
                          f"{first_line(err, 200)})") from None
    name, error = result.worst
    if not result.passed:
        raise KernelFault(f"{where}: disagrees with the PyTorch reference ({name} off by "
                          f"{error:.2g} of its scale, allowed {TOLERANCE[dtype]:.0e})")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)
