"""mLiT: mixture-of-experts lightweight vision transformers and their MAE pre-training.

Importing mlit imports none of its layers: the public names below (mlit.create_model,
mlit.MLiT, ...) import the model when first used, so `import mlit.model` (or mlit.kernels,
mlit.errors) brings that layer and those under it alone, as the layers promise
(docs/architecture.md). What the package itself does at import: a command's process
settings (OpenMP's idle spin and torch's log level, before torch loads; malloc keeping the
memory it frees), and a finder that registers mLiT in timm when timm is imported
(docs/timm.md).
"""

import importlib
import importlib.util
import os
import sys

# Whether this process is a command (python -m mlit.train|zoo|shape|..., and the processes
# torchrun starts for one): python -m sets sys.argv[0] to "-m" while it finds the module, which
# is when mlit is imported; a program that imports mlit as a library has its own argv[0].
COMMAND = sys.argv[:1] == ["-m"]

# A command lets OpenMP's idle threads spin briefly, then sleep: with OpenMP's default (GNU
# OpenMP spins for 300,000 rounds) a run beside another torch process on the same cores took
# 18-22x its time alone (the quickstart; mLiT-S's CIFAR steps 4-7x), its threads spinning
# against the other's; a short spin keeps that at 1.7-1.9x (2.2x) and costs 3-4% alone
# (11-14%) (docs/benchmarks.md, tools/bench_contention.py). Set before torch loads OpenMP, so
# here; a user's own setting of either (OPENMP_SETTINGS), and a program that imports mlit as
# a library, are left alone.
SPIN_ROUNDS = "4000"
OPENMP_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
if COMMAND and "torch" not in sys.modules and \
        not any(name in os.environ for name in OPENMP_SETTINGS):
    os.environ["GOMP_SPINCOUNT"] = SPIN_ROUNDS


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep the memory a process frees for its next allocations instead of
    returning it to the system; whether it could (Linux with glibc).

    glibc maps every block over 32 MiB afresh and unmaps it when freed, so a training step
    whose activations are that large (a CPU batch of a thousand images) faults in gigabytes
    of zeroed pages every step: mLiT-XXS's MAE step at batch 1,280 took 3.1-3.3 million page
    faults and 10-11 s of system time a step, 17.8-19.5 s in all, and 11.8 s with its memory
    kept (docs/benchmarks.md, tools/bench_memory.py). The price is a higher peak of resident
    memory (15-19% there), held until the process ends."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # no C library to ask, or one without mallopt
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # malloc.h
    # -1 turns trimming off (mallopt(3)); any threshold, even the largest int's 2 GiB, still
    # hands back a free top of the heap that large, which a step at a paper's batch can free
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, -1))


# A command keeps its freed memory (keep_freed_memory); a user's own malloc settings (and a
# preloaded library, which may be an allocator of their choice), and a program that imports
# mlit as a library, are left alone.
MALLOC_SETTINGS = ("GLIBC_TUNABLES", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "LD_PRELOAD")
if COMMAND and sys.platform == "linux" and \
        not any(name in os.environ for name in MALLOC_SETTINGS):
    keep_freed_memory()


# The launcher (python -m mlit.train --nproc-per-node ...) says in one line what became of a
# rendezvous; torch's C++ log would add a warning and a stack for every connection attempt.
# Off in the launcher's own process only, before torch reads it: the launcher gives the
# workers the user's setting back (mlit/training/launcher.py, QUIETED).
if COMMAND and "torch" not in sys.modules and \
        "TORCH_CPP_LOG_LEVEL" not in os.environ and \
        any(a.startswith(("--nproc-per-node", "--nnodes", "--rdzv")) for a in sys.argv):
    os.environ["TORCH_CPP_LOG_LEVEL"] = os.environ["MLIT_QUIETED_CPP_LOG"] = "FATAL"

# The public API, each name where it is declared; imported on first use (PEP 562).
PUBLIC = {
    "MLiT": "mlit.model.encoder", "MLiTEncoder": "mlit.model.encoder",
    "MaskedAutoEncoder": "mlit.model.mae", "MLiTConfig": "mlit.model.config",
    "CONFIGS": "mlit.model.registry", "create_mae": "mlit.model.registry",
    "create_model": "mlit.model.registry", "model_config": "mlit.model.registry",
}


def __getattr__(name):
    if name in PUBLIC:
        value = getattr(importlib.import_module(PUBLIC[name]), name)
        globals()[name] = value  # the next lookup is a plain attribute
        return value
    if importlib.util.find_spec(f"{__name__}.{name}") is not None:  # mlit.model, mlit.data, ...
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(PUBLIC))


def load(path):
    """Rebuild the model a .pt checkpoint or .safetensors export holds, from the file alone,
    in eval mode on the CPU (mlit.files.modelfile.load_model)."""
    from mlit.files.modelfile import load_model

    return load_model(path)


# mLiT in timm's registry without importing timm: a timm user writes `import mlit, timm` in
# either order, and a user without timm pays nothing. Where timm is imported already, the
# models are registered now; where it is installed, a finder on sys.meta_path waits for its
# first import, registers them once timm's own package has run, and steps aside. It lives
# here, not in mlit.inference, so that importing a lower layer never runs the upper ones.
def register_in_timm() -> None:
    try:
        from mlit.inference.timm_models import register
    except ImportError:  # a timm too old or broken for this torch: mlit works without it
        return
    register()


class TimmImportHook:
    """A meta path finder that answers for `timm` alone: it finds timm's spec as Python
    would (the other finders), and once that module has run, registers mLiT's models and
    leaves sys.meta_path. A search that imports nothing (importlib.util.find_spec) leaves it
    waiting."""

    def __init__(self):
        self.searching = False

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "timm" or self.searching:
            return None
        self.searching = True
        try:
            spec = importlib.util.find_spec("timm")
        finally:
            self.searching = False
        if spec is not None and spec.loader is not None:
            run_module = spec.loader.exec_module

            def exec_module(module):
                run_module(module)
                if self in sys.meta_path:
                    sys.meta_path.remove(self)
                register_in_timm()

            spec.loader.exec_module = exec_module
        return spec


def register_when_timm_loads() -> None:
    """Register mLiT in timm now if timm is imported, at its import if it is installed."""
    if "timm" in sys.modules:
        register_in_timm()
    elif any(isinstance(f, TimmImportHook) for f in sys.meta_path):
        return
    elif importlib.util.find_spec("timm") is not None:
        sys.meta_path.insert(0, TimmImportHook())


register_when_timm_loads()  # timm.create_model("mlit_s", ...) (docs/timm.md)

__all__ = ["MLiT", "MLiTEncoder", "MaskedAutoEncoder", "MLiTConfig", "CONFIGS",
           "create_mae", "create_model", "load", "model_config"]
__version__ = "0.1.0"
