"""Every test: Triton's interpreter where there is no GPU, and a fixed torch seed."""

import os

import torch

# Without a GPU the Triton kernels run in Triton's interpreter, on the CPU. It must be set
# before mlit.kernels is imported (triton.jit reads it when decorating).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
