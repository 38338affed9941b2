"""Ahead-of-time compilation of the MoE kernels for a named GPU, on any machine.

Triton compiles a kernel at its first launch, on the GPU. Its compiler also runs without one
when given a target (ptxas ships inside the Triton wheel), so CI proves on a CPU that the
kernels lower to Ampere (sm_80) and Hopper (sm_90) machine code with tensor-core
instructions and no register spills; tools/kernel_report.py prints the same resources.
The interpreter tests (tests/test_moe_kernel.py) check the numbers; this checks the build.
At launch Triton also specialises on arguments divisible by 16 (aligned, wider loads); this
build does not assume them, so it is the general case the launcher falls back to.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import get_ptxas
from triton.compiler import ASTSource

from mlit.kernels.moe import launch_options
from mlit.kernels.moe_kernels import moe_hidden_bwd_kernel, moe_hidden_fwd_kernel
from mlit.kernels.support import TRITON_ARRANGEMENTS

KERNELS = {"forward": moe_hidden_fwd_kernel, "backward": moe_hidden_bwd_kernel}
SIZES = {"N", "D", "HID", "E"}  # int32 arguments; every other runtime argument is a pointer
FP32_BUFFERS = {"G", "DG"}  # gates and gate-gradient partials: the router runs in fp32
TRITON_DTYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


def signature(kernel, dtype: torch.dtype) -> dict[str, str]:
    """Argument types as the launcher in kernels/moe.py passes them."""
    sig = {}
    for param in kernel.params:
        if param.is_constexpr:
            sig[param.name] = "constexpr"
        elif param.name in SIZES:
            sig[param.name] = "i32"
        else:
            sig[param.name] = "*fp32" if param.name in FP32_BUFFERS else \
                "*" + TRITON_DTYPES[dtype]
    return sig


def compile_kernel(kernel, dtype: torch.dtype, arch: int, shared: str = "v_w2"):
    """Triton's full pipeline (TTIR, TTGIR, LLVM IR, PTX, cubin) for sm_<arch>, for one
    sharing arrangement of the experts (TRITON_ARRANGEMENTS)."""
    if not hasattr(kernel, "params"):  # @triton.jit gave an interpreter function
        raise RuntimeError("ahead-of-time compilation needs real Triton kernels: unset "
                           "TRITON_INTERPRET before importing mlit.kernels")
    constants = {**launch_options(dtype), "SWISH_SHARED": TRITON_ARRANGEMENTS[shared]}
    num_warps = constants.pop("num_warps")
    source = ASTSource(kernel, signature(kernel, dtype), constants)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32),
                          options={"num_warps": num_warps})


@dataclass
class Resources:
    registers: int  # per thread
    spill_bytes: int  # stores + loads to local memory
    shared_bytes: int
    tensor_core: str | None  # "wgmma" (Hopper), "mma" (Ampere) or None (FMA only)


def resources(compiled) -> Resources:
    """What ptxas reports for the kernel's PTX, and which matrix instruction it uses."""
    ptx = compiled.asm["ptx"]
    target = re.search(r"^\.target\s+(sm_\w+)", ptx, re.M).group(1)
    arch = int(re.match(r"sm_(\d+)", target).group(1))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "kernel.ptx")
        path.write_text(ptx)
        report = subprocess.run([get_ptxas(arch).path, f"-arch={target}", "-v", str(path),
                                 "-o", str(Path(tmp, "kernel.cubin"))],
                                capture_output=True, text=True, check=True).stderr
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", report)
    tensor_core = "wgmma" if "wgmma." in ptx else "mma" if "mma.sync" in ptx else None
    return Resources(registers=int(re.search(r"Used (\d+) registers", report).group(1)),
                     spill_bytes=int(spills.group(1)) + int(spills.group(2)),
                     shared_bytes=compiled.metadata.shared, tensor_core=tensor_core)
