"""One writer per folder: an OS file lock on `<folder>/.lock`, held while a run trains.

The lock is `flock(2)` on an open file: the kernel releases it when the process exits in any
way, `kill -9` included, so a dead run never leaves a stale lock behind. The holder writes its
PID and host into the file so that a second process can say who holds the folder. (flock works
between hosts on Linux NFS clients since 2.6.12, where it is emulated with POSIX locks.)
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from mlit.errors import BadInput

LOCK_NAME = ".lock"


class FolderBusy(BadInput):
    """Another process holds the folder (exit 2); the line says what to do about it."""

    def __init__(self, folder: Path, holder: str, advice: str):
        super().__init__(f"{folder} is in use by {holder}")
        self.folder, self.holder, self.advice = folder, holder, advice

    def line(self) -> str:
        return f"{self}: {self.advice}"


class FolderLock:
    """Exclusive, non-blocking lock of a folder; a context manager.

        with FolderLock(out):      # FolderBusy if another process holds it
            ...train...
    """

    def __init__(self, folder: str | Path,
                 advice: str = "wait for it to finish, or choose another folder"):
        self.folder, self.advice = Path(folder), advice  # what a FolderBusy tells the user
        self.path = self.folder / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> FolderLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 256, 0).decode(errors="replace").strip()
            os.close(fd)
            raise FolderBusy(self.folder, holder or "another process", self.advice) from None
        # overwrite in place (no truncate first): a full disk cannot take the page away
        stamp = f"process {os.getpid()} on {socket.gethostname()}".encode()
        try:
            os.pwrite(fd, stamp.ljust(max(len(stamp), os.fstat(fd).st_size)), 0)
        except OSError:
            pass  # the stamp only names the holder; the lock itself is held
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
