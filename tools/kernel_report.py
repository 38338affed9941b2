"""What the MoE kernels compile to on a GPU, without needing one: registers a thread, spilled
bytes, shared memory and the matrix instruction, per target, dtype and kernel.

    python tools/kernel_report.py                 # sm_80 (A100) and sm_90 (H100), all dtypes
    python tools/kernel_report.py --archs 90 --json
    python tools/kernel_report.py --shared v_w2,w_w2   # both arrangements the kernel serves

Runs Triton's compiler and ptxas ahead of time (kernels/aot.py, imported as mlit.kernels.aot). Spills and missing
tensor-core instructions are what this can show; speed needs a GPU (tools/bench_moe.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

import torch

from mlit.cli import names_from, numbers
from mlit.kernels.support import TRITON_ARRANGEMENTS

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def report(archs: list[int], dtypes: list[str], arrangements: list[str]) -> list[dict]:
    from mlit.kernels.aot import KERNELS, compile_kernel, resources

    rows = []
    for shared in arrangements:
        for arch in archs:
            for dtype in dtypes:
                for name, kernel in KERNELS.items():
                    used = resources(compile_kernel(kernel, DTYPES[dtype], arch, shared))
                    rows.append({"shared": shared, "arch": f"sm_{arch}", "dtype": dtype,
                                 "kernel": name, **dataclasses.asdict(used)})
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="80,90", type=numbers(int, 1),
                        help="comma list of compute capabilities")
    parser.add_argument("--dtypes", default="bf16,fp16,fp32", type=names_from(DTYPES, "dtype"))
    parser.add_argument("--shared", default="v_w2",
                        type=names_from(TRITON_ARRANGEMENTS, "arrangement"),
                        help=f"comma list of {', '.join(TRITON_ARRANGEMENTS)}")
    parser.add_argument("--json", action="store_true", help="one JSON list on stdout")
    args = parser.parse_args(argv)
    # checked before the kernels are imported: under the interpreter triton.jit makes them
    # the interpreter's functions, which have no build to report
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("unset TRITON_INTERPRET (it replaces the kernels by the interpreter)")
    import triton

    from mlit.kernels.moe import launch_options

    rows = report(args.archs, args.dtypes, args.shared)
    if args.json:
        print(json.dumps(rows))
        return
    options = launch_options(torch.bfloat16)
    print(f"triton {triton.__version__}; tiles BLOCK_N={options['BLOCK_N']} "
          f"BLOCK_H={options['BLOCK_H']} BLOCK_D={options['BLOCK_D']}, "
          f"{options['num_warps']} warps")
    print(f"{'shared':<6} {'arch':<6} {'dtype':<5} {'kernel':<9} {'regs':>5} {'spill B':>8} "
          f"{'smem B':>7} matrix")
    for r in rows:
        print(f"{r['shared']:<6} {r['arch']:<6} {r['dtype']:<5} {r['kernel']:<9} "
              f"{r['registers']:>5} {r['spill_bytes']:>8} {r['shared_bytes']:>7} "
              f"{r['tensor_core'] or 'FMA'}")


if __name__ == "__main__":
    main()
