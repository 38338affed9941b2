"""Files a run writes, written so that a crash or a full disk never leaves half of one.

Every file is written whole to a temporary name in the same folder, synced and renamed over
the old one (a rename is atomic on POSIX filesystems): a reader sees the old file or the new
one, never a mixture. Line logs (metrics.jsonl, a zoo's result.json) are rewritten the same
way (mlit/files/jsonl.py), so a line is either whole or absent. A full disk becomes `DiskFull`, which names the file
that could not be written; the caller adds which checkpoint is still good.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path

from mlit.errors import Fault, StopsARun

# temporary files of atomic writes: ".<name>.<random>.tmp" beside the file they replace
TMP_PREFIX, TMP_SUFFIX = ".", ".tmp"
DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


class DiskFull(Fault, OSError, StopsARun):
    """No space left (or quota exceeded) while writing `path` (exit 1); in a run, the runner
    adds where it stopped and the last good checkpoint (mlit.errors.context)."""

    def __init__(self, path: str | Path):
        super().__init__(errno.ENOSPC, "no space left on device", str(path))
        self.path = Path(path)

    def __str__(self) -> str:
        return f"no space left on device while writing {self.path}"

    def line(self) -> str:
        return self.with_context(str(self))


@contextlib.contextmanager
def disk_errors(path: str | Path):
    """Turn ENOSPC / EDQUOT raised inside the block into DiskFull(path)."""
    try:
        yield
    except DiskFull:
        raise
    except OSError as err:
        if err.errno in DISK_FULL_ERRNOS:
            raise DiskFull(path) from None
        raise


def current_umask() -> int:
    """The process's umask, read without changing it where Linux tells it (os.umask would
    set it for a moment, under the feet of TensorBoard's writer thread)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` through a synced temporary file and a rename. The file gets
    the mode any program's new file gets (0666 less the umask): mkstemp's 0600 would make a
    run or an export unreadable to the rest of a shared server."""
    path = Path(path)
    with disk_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{TMP_PREFIX}{path.name}.",
                                   suffix=TMP_SUFFIX)
        try:
            os.fchmod(fd, 0o666 & ~current_umask())
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def write_json(path: str | Path, obj, indent: int | None = 2) -> None:
    write_text_atomic(path, json.dumps(obj, indent=indent) + "\n")


def remove_orphans(folder: str | Path) -> list[Path]:
    """Delete the temporary files that writes killed mid-way left in `folder`, its stage
    folders and the per-epoch checkpoint folders (a zoo model's, or a stage's). Only safe
    while holding the folder's lock."""
    folder = Path(folder)
    found = [*folder.glob(f"{TMP_PREFIX}*{TMP_SUFFIX}"),
             *folder.glob(f"*/{TMP_PREFIX}*{TMP_SUFFIX}"),
             *folder.glob(f"*/checkpoint_*/{TMP_PREFIX}*{TMP_SUFFIX}")]
    for path in found:
        path.unlink(missing_ok=True)
    return found
