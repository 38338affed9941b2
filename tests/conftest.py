"""Every test: a short OpenMP spin, Triton's interpreter where there is no GPU, a fixed torch seed,
and under pytest-xdist a share of the cores."""

import os

import mlit  # its import loads no torch

# As mlit's commands do (mlit/__init__.py): idle OpenMP threads spin briefly, then sleep, so the
# suite beside other work (a second run, another CI job) slows down, it does not collapse.
# Before torch loads OpenMP; a setting of the user's stays.
if not any(name in os.environ for name in mlit.OPENMP_SETTINGS):
    os.environ["GOMP_SPINCOUNT"] = mlit.SPIN_ROUNDS

import torch  # noqa: E402

# Without a GPU the Triton kernels run in Triton's interpreter, on the CPU. It must be set
# before mlit.kernels is imported (triton.jit reads it when decorating).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

# pytest-xdist's workers (pyproject: -n auto) share the cores instead of each taking them all.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    torch.set_num_threads(max(1, (os.cpu_count() or 1)
                              // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
