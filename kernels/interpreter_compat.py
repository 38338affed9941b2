"""Triton 3.6's interpreter under NumPy 2.4 and newer, where the kernels' loops fail.

Under TRITON_INTERPRET=1 every scalar argument of a kernel (N, D, HID, E) is a one-element
NumPy array, and Python's `range(0, D, BLOCK_D)` asks it for `__index__`. Triton 3.6 answers
with `int(array)`, which NumPy deprecated for arrays of one dimension in 1.25 and refuses
since 2.4 ("only 0-dimensional arrays can be converted to Python scalars"); later Triton
releases take the one element out first. This gives 3.6 the same answer, only inside the
interpreter's own patch scope (restored after each launch), and changes nothing on a GPU.
"""

from __future__ import annotations

import os


def _scalar_index(tensor) -> int:
    return int(tensor.handle.data.reshape(-1)[0])


def patch_interpreter() -> bool:
    """Make the interpreter's tensor `__index__` read its one element; True if patched."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return False
    from triton.runtime import interpreter

    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None or getattr(original, "scalar_index_fixed", False):
        return False

    def patch_lang_tensor(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", _scalar_index)  # restored with the rest

    patch_lang_tensor.scalar_index_fixed = True
    interpreter._patch_lang_tensor = patch_lang_tensor
    return True
