"""How every command ends: one line on stderr that names the file, field or flag, and an exit
status; never a traceback.

    0    done
    1    a fault at run time: a full disk, a lost mount, a non-finite loss, a kernel that fails
    2    bad input, found before any work: a recipe, a flag, a file given or read back
    3    (the zoo and the shape sweep) work left for another run
    130  interrupted by Ctrl-C (SIGINT); 143 stopped by SIGTERM, as clusters stop a job

Every command's `main` hands its body to `run_command`, which turns the project's own errors
into their line (`error_line`); an exception it does not know is a bug and keeps its traceback.
Output paths are checked before any work (`output_file`, `output_folder`) and numeric flags
by argparse types (`number`).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import sys
import tempfile
from pathlib import Path


class BadInput(ValueError):
    """An argument or file that cannot be used; the message names it and says what to do."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM. A runner that knows where it stopped fills `where` (e.g. 'in stage
    finetune, epoch 3') and `last_good` (the checkpoint a rerun resumes from)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.where = ""
        self.last_good = ""
        self.resume = "run the same command again to resume"

    @property
    def status(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM

    def __str__(self) -> str:
        parts = [f"interrupted by {signal.Signals(self.signum).name}"
                 + (f" {self.where}" if self.where else "")]
        if self.last_good:
            parts.append(f"the last checkpoint is {self.last_good}")
        parts.append(self.resume)
        return "; ".join(parts)


@contextlib.contextmanager
def signals_as_interrupts():
    """SIGINT and SIGTERM raise Interrupted in the main thread, so that `finally` blocks run
    (locks released, temporary files removed) and the command can say where it stopped."""
    def handler(signum, frame):
        raise Interrupted(signum)

    import threading
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def error_line(err: BaseException) -> tuple[int, str] | None:
    """(exit status, line) for the errors the project raises on purpose; None for a bug."""
    import torch

    from mlit.checkpoint import CheckpointError, first_line
    from mlit.config import RecipeError
    from mlit.distributed import PeerStopped, world
    from mlit.data.datasets import DatasetError
    from mlit.engine import NonFiniteLoss
    from mlit.export_onnx import ExportFailed
    from mlit.files import DamagedFile, DiskFull
    from mlit.kernels.selfcheck import KernelFault
    from mlit.lock import FolderBusy

    if isinstance(err, Interrupted):
        return err.status, str(err)
    if isinstance(err, PeerStopped):
        return 2, str(err)
    if isinstance(err, torch.distributed.DistError) or (
            world().distributed and isinstance(err, RuntimeError)
            and any(k in str(err) for k in ("gloo", "NCCL", "Connection closed"))):
        return 1, (f"lost the other processes of the run ({first_line(err)}); the last "
                   "checkpoint is kept: run the same command again to resume")
    if isinstance(err, DiskFull):
        last = f"; the last good checkpoint is {err.last_good}" if err.last_good else ""
        return 1, f"{err}{last}"
    if isinstance(err, NonFiniteLoss):
        return 1, f"{err}{f' ({err.where})' if err.where else ''}; stopped"
    if isinstance(err, ExportFailed):
        return 1, str(err)
    if isinstance(err, KernelFault):
        return 1, f"{err}; stopped (moe_impl=auto would use torch there)"
    if isinstance(err, FolderBusy):
        return 2, f"{err}: {err.advice}"
    if isinstance(err, (BadInput, RecipeError, DatasetError, CheckpointError, DamagedFile,
                        ValueError)):
        # ValueError: settings that only fail once the work starts (device, amp, batch size)
        return 2, str(err)
    if isinstance(err, OSError):  # the machine refused a file: permissions, a lost mount
        where = f" ({err.filename})" if err.filename else ""
        return 1, f"{err.strerror or err}{where}"
    return None


def run_command(prog: str, body) -> int:
    """body() is the command's work and returns its exit status; what it raises on purpose
    becomes one line on stderr, `prog: ...`, and that error's status."""
    from mlit.distributed import world

    with signals_as_interrupts():
        try:
            return body()
        except BaseException as err:
            known = error_line(err)
            if known is None:
                raise
            status, line = known
            w = world()  # under torchrun: which rank says it
            print(f"{prog}{f' [{w}]' if w.distributed else ''}: {line}", file=sys.stderr)
            return status


# -- output paths, checked before any work ----------------------------------------------------
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


def writable_folder(folder: Path, flag: str, target: Path) -> None:
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
    if len(target.name.encode()) > name_limit(folder):
        raise BadInput(f"{flag} {target}: the file name is longer than this filesystem allows")


def output_file(path: str | Path, flag: str) -> Path:
    """A file a command will write: not a folder, in a folder it can write (created here)."""
    path = Path(path)
    check_name_lengths(path, flag)
    if path.is_dir():
        raise BadInput(f"{flag} {path}: is a folder; name the file to write")
    writable_folder(path.parent if str(path.parent) else Path("."), flag, path)
    return path


def output_folder(path: str | Path, flag: str) -> Path:
    """A folder a command will write into: not a file, writable (created here)."""
    path = Path(path)
    check_name_lengths(path, flag)
    if path.exists() and not path.is_dir():
        raise BadInput(f"{flag} {path}: is a file, not a folder")
    writable_folder(path, flag, path)
    return path


# -- numeric flags ----------------------------------------------------------------------------
def number(kind=float, low: float | None = None, high: float | None = None,
           low_open: bool = False):
    """An argparse type: a finite `kind` in [low, high] (low excluded when low_open)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {describe()}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not {describe()}")
        below = low is not None and (value <= low if low_open else value < low)
        if below or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{text!r} is not {describe()}")
        return value

    def describe() -> str:
        what = "an integer" if kind is int else "a finite number"
        if low is not None and high is not None:
            return f"{what} in {'(' if low_open else '['}{low:g}, {high:g}]"
        if low is not None:
            return f"{what} {'above' if low_open else 'of at least'} {low:g}"
        return what

    parse.__name__ = "number"
    return parse
