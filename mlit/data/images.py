"""Decoding one image file of a folder dataset: what mlit makes of the files people have
(phone photos, 16-bit scans, TIFFs, huge panoramas), and the library noise it keeps off the
command's output (docs/datasets.md).
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def open_rgb(path: Path) -> Image.Image:
    """The image at `path` as 8-bit RGB, upright: the EXIF orientation a camera wrote is
    applied (phone photos are stored rotated), 16-bit images are scaled to 8 bits rather than
    clipped to white, and grey, RGBA, palette and CMYK become RGB. PIL's decompression-bomb
    warning (an image over 89 Mpx) becomes one line of ours; the image is still used; libtiff's
    own notes are silenced (c_stderr_silenced)."""
    from PIL import Image, ImageOps  # here, not above: a sweep's or a zoo's plan opens none

    quiet = c_stderr_silenced() if path.suffix.lower() in (".tif", ".tiff") else \
        contextlib.nullcontext()
    with quiet, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", Image.DecompressionBombWarning)  # every file's
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            if image.mode in SIXTEEN_BIT or (image.mode == "I"  # 32-bit holding 16-bit data
                                             and 255 < image.getextrema()[1] < 2**16):
                pixels = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)
                image = Image.fromarray(((pixels + 128) // 257).astype(np.uint8), mode="L")
            image = image.convert("RGB")
    if any(issubclass(w.category, Image.DecompressionBombWarning) for w in caught):
        warn_once(path, f"warning: {path}: over PIL's decompression-bomb limit of "
                        f"{Image.MAX_IMAGE_PIXELS:,} pixels; decoded anyway")
    return image


@contextlib.contextmanager
def c_stderr_silenced():
    """libtiff prints its notes on a damaged file ("Using code not yet in table.") straight
    to file descriptor 2, past Python; while a TIFF decodes, that descriptor goes to /dev/null,
    and the file's problem, if any, is our one warning line."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


_WARNED: set[Path] = set()


def warn_once(path: Path, line: str) -> None:
    if path not in _WARNED:
        _WARNED.add(path)
        print(line, file=sys.stderr)
