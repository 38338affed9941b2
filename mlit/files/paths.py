"""Paths, checked before any work: a file a command will write (`output_file`) or a folder it
will write into (`output_folder`), created if need be and probed with a real write (os.access
is wrong as root and on /proc); names over the filesystem's limit are refused before any stat,
which itself fails on them. Each problem is one BadInput line naming the flag. And a folder an
earlier run wrote that a command reads (`input_folder`: a zoo, a sweep).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from mlit.errors import BadInput

# an atomic write goes through ".<name>.<8 random characters>.tmp" (mlit/files/atomic.py) and
# an ONNX export through a folder ".<name>.<8 random characters>": 14 bytes over the name
TEMPORARY_NAME_EXTRA = 14


def name_limit(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def check_name_lengths(target: Path, flag: str) -> None:
    for part in (target, *target.parents):  # before any stat: those fail on such names
        if len(part.name.encode()) > 255:
            raise BadInput(f"{flag} {target}: the name {part.name[:40]}... is longer than "
                           "255 bytes")


def writable_folder(folder: Path, flag: str, target: Path, extra: int = 0) -> None:
    """Create `folder` (and its parents) and write a probe file in it, or BadInput."""
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path("/"))
    if not existing.is_dir():
        raise BadInput(f"{flag} {target}: {existing} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise BadInput(f"{flag} {target}: cannot write there ({err.strerror})") from None
    if len(target.name.encode()) + extra > name_limit(folder):
        raise BadInput(f"{flag} {target}: the file name is longer than this filesystem allows"
                       + (f" (with the {extra} bytes of its temporary name)" if extra else ""))


def output_file(path: str | Path, flag: str) -> Path:
    """A file a command will write: not a folder, in a folder it can write (created here),
    with a name its temporary name still fits beside."""
    path = Path(path)
    check_name_lengths(path, flag)
    if len(path.name.encode()) + TEMPORARY_NAME_EXTRA > 255:
        raise BadInput(f"{flag} {path}: the file name is {len(path.name.encode())} bytes; "
                       f"it is written through a temporary name {TEMPORARY_NAME_EXTRA} bytes "
                       f"longer, so it may have at most {255 - TEMPORARY_NAME_EXTRA}")
    if path.is_dir():
        raise BadInput(f"{flag} {path}: is a folder; name the file to write")
    writable_folder(path.parent if str(path.parent) else Path("."), flag, path,
                    TEMPORARY_NAME_EXTRA)
    return path


def output_folder(path: str | Path, flag: str) -> Path:
    """A folder a command will write into: not a file, writable (created here)."""
    path = Path(path)
    check_name_lengths(path, flag)
    if path.exists() and not path.is_dir():
        raise BadInput(f"{flag} {path}: is a file, not a folder")
    writable_folder(path, flag, path)
    return path


def input_folder(path: str | Path, what: str, flag: str) -> Path:
    """A folder a command reads that a run wrote with `flag` (a zoo, a sweep), or BadInput."""
    path = Path(path)
    if path.is_file():
        raise BadInput(f"{path}: is a file, not a {what} folder (the {flag} a run wrote)")
    if not path.is_dir():
        raise BadInput(f"{path}: no such {what} folder")
    return path
