"""Triton kernels for mLiT's expert mixture, installed as `mlit.kernels` (pyproject.toml maps
this top-level folder there, since PyPI already has a `kernels` package).

- support.py: what the kernel serves (arrangements, dtype), importable without Triton;
- moe_kernels.py: the fused forward and backward kernels (@triton.jit);
- moe.py: them as torch custom ops with autograd, for mlit.model.dispatch;
- aot.py: ahead-of-time compilation for a named GPU, on any machine (tools/kernel_report.py);
- interpreter_compat.py: Triton 3.6's interpreter under NumPy >= 2.4.

The lowest layer of the project: nothing here imports mlit outside mlit.kernels (an
import-linter contract in pyproject.toml says so); the model calls in, never the reverse.
"""
