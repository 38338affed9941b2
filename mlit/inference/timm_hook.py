"""mLiT in timm's registry without importing timm: `import mlit` costs a timm user nothing
until timm is imported, and a user without timm nothing at all (docs/timm.md).

Where timm is already imported, its models are registered at once; where it is installed but
not imported, a finder on sys.meta_path waits for its first import and registers them when
timm's own package has run (mlit/inference/timm_models.py), then steps aside.
"""

from __future__ import annotations

import importlib.util
import sys


def register_now() -> None:
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
                register_now()

            spec.loader.exec_module = exec_module
        return spec


def register_when_timm_loads() -> None:
    """Register mLiT in timm now if timm is imported, at its import if it is installed."""
    if "timm" in sys.modules:
        register_now()
    elif any(isinstance(f, TimmImportHook) for f in sys.meta_path):
        return
    elif importlib.util.find_spec("timm") is not None:
        sys.meta_path.insert(0, TimmImportHook())
