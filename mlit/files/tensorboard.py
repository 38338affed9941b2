"""TensorBoard logging whose disk errors come back as one DiskFull naming the folder.

torch's SummaryWriter writes its event files from background threads. When a write fails
(a full disk), the thread stores the error, prints its traceback and dies; the next call from
the training loop raises the stored error. We keep the second half: the hook below silences
the writer threads' tracebacks (the same error is raised again, once, in the main thread),
and every call goes through `disk_errors`, so the runner reports it in one line.
"""

from __future__ import annotations

import threading
from pathlib import Path

from mlit.files.atomic import disk_errors

_default_hook = threading.excepthook


def _quiet_writer_threads(args) -> None:
    if type(args.thread).__name__ == "_AsyncWriterThread" and \
            isinstance(args.exc_value, OSError):
        return  # re-raised in the main thread by the writer's next call
    _default_hook(args)


class TensorBoard:
    """SummaryWriter(folder) with add_scalar, add_scalars, add_image, flush and close."""

    def __init__(self, folder: str | Path, enabled: bool = True):
        """enabled=False: every call does nothing (the ranks other than 0 of a torchrun)."""
        from torch.utils.tensorboard import SummaryWriter

        self.folder, self.writer = Path(folder), None
        if enabled:
            threading.excepthook = _quiet_writer_threads
            with disk_errors(self.folder):
                self.writer = SummaryWriter(str(self.folder))

    def _call(self, name: str, *args, **kwargs):
        if self.writer is None:
            return None
        with disk_errors(self.folder):
            return getattr(self.writer, name)(*args, **kwargs)

    def add_scalar(self, *args, **kwargs):
        return self._call("add_scalar", *args, **kwargs)

    def add_scalars(self, *args, **kwargs):
        return self._call("add_scalars", *args, **kwargs)

    def add_image(self, *args, **kwargs):
        return self._call("add_image", *args, **kwargs)

    def flush(self) -> None:
        self._call("flush")

    def close(self, quiet: bool = False) -> None:
        """quiet: an error is already on its way up; a failing close must not replace it."""
        try:
            self._call("close")
        except OSError:
            if not quiet:
                raise
