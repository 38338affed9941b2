"""mLiT: mixture-of-experts lightweight vision transformers and their MAE pre-training.

Importing mlit imports torch and the model alone; mlit.load reads model files when called,
and timm sees mLiT's models once timm itself is imported (docs/timm.md).
"""

import os
import sys

# A command (python -m mlit.train|zoo|shape|..., and the processes torchrun starts for one)
# lets OpenMP's idle threads spin briefly, then sleep: with OpenMP's default (GNU OpenMP spins
# for 300,000 rounds) a run beside another torch process on the same cores took 20x its time
# alone, its threads spinning against the other's; a short spin keeps it under 2x and costs
# a few percent alone (docs/benchmarks.md, tools/bench_contention.py). Set before torch loads
# OpenMP, so here; a user's own setting, and a program that imports mlit as a library, are
# left alone.
SPIN_ROUNDS = "4000"
if sys.argv[:1] == ["-m"] and "torch" not in sys.modules and \
        "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", SPIN_ROUNDS)

# The launcher (python -m mlit.train --nproc-per-node ...) says in one line what became of a
# rendezvous; torch's C++ log would add a warning and a stack for every connection attempt.
# Off in the launcher's own process only, before torch reads it: the launcher gives the
# workers the user's setting back (mlit/training/launcher.py, QUIETED).
if sys.argv[:1] == ["-m"] and "torch" not in sys.modules and \
        "TORCH_CPP_LOG_LEVEL" not in os.environ and \
        any(a.startswith(("--nproc-per-node", "--nnodes", "--rdzv")) for a in sys.argv):
    os.environ["TORCH_CPP_LOG_LEVEL"] = os.environ["MLIT_QUIETED_CPP_LOG"] = "FATAL"

from mlit.inference.timm_hook import register_when_timm_loads  # noqa: E402
from mlit.model.config import MLiTConfig  # noqa: E402
from mlit.model.encoder import MLiT, MLiTEncoder  # noqa: E402
from mlit.model.mae import MaskedAutoEncoder  # noqa: E402
from mlit.model.registry import CONFIGS, create_mae, create_model, model_config  # noqa: E402


def load(path):
    """Rebuild the model a .pt checkpoint or .safetensors export holds, from the file alone,
    in eval mode on the CPU (mlit.files.modelfile.load_model)."""
    from mlit.files.modelfile import load_model

    return load_model(path)


register_when_timm_loads()  # timm.create_model("mlit_s", ...) (docs/timm.md)

__all__ = ["MLiT", "MLiTEncoder", "MaskedAutoEncoder", "MLiTConfig", "CONFIGS",
           "create_mae", "create_model", "load", "model_config"]
__version__ = "0.1.0"
