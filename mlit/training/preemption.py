"""Preemption: a run stopped by SIGINT or SIGTERM loses at most the step in flight, and one
killed outright (kill -9, a lost node) at most `train.checkpoint_minutes` (docs/training.md).

While a stage trains, a signal is noted rather than raised: the optimiser step in flight
finishes, and at its end every rank learns of it (the maximum over the ranks of what each
noted), so that all stop after the same step; rank 0 writes a checkpoint of that step and
the stage raises Interrupted, which says where it stopped. The same agreement carries rank
0's clock: once `checkpoint_minutes` have passed since the last checkpoint, every rank takes
part in a recovery checkpoint at that step (rank 0 writes it, atomically as every
checkpoint). The draws of every step are keyed by the step (mlit/data/seeds.py), so the
same command resumes from that step and ends on the weights of a run never stopped.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time

from mlit.distributed import max_over_ranks, world
from mlit.errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Preemption:
    def __init__(self, checkpoint_minutes: float = 0.0):
        self.interval = checkpoint_minutes * 60  # seconds; 0: no recovery checkpoints
        self.signum = 0  # the first stop signal noted, 0 for none
        self.last_save = time.monotonic()

    @contextlib.contextmanager
    def deferred(self):
        """Inside the block SIGINT and SIGTERM are noted for `check`; a signal noted but not
        acted on when the block ends (the stage had finished) raises Interrupted then, on
        every rank (the block ends at the same step on each)."""
        if threading.current_thread() is not threading.main_thread():
            yield self  # signals reach the main thread alone: nothing to defer here
            return

        def note(signum, frame):
            self.signum = self.signum or signum  # a second signal (the launcher's echo) too

        previous = {s: signal.signal(s, note) for s in SIGNALS}
        try:
            yield self
            signum, _ = self.check()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        if signum or self.signum:  # or one that came in the instant after the agreement
            raise Interrupted(signum or self.signum)

    def check(self) -> tuple[int, bool]:
        """At a step's end, the same on every rank: (the signal to stop on, or 0; whether a
        recovery checkpoint is due)."""
        due = (self.interval > 0 and world().writer
               and time.monotonic() - self.last_save >= self.interval)
        signum, due = max_over_ranks([self.signum, int(due)])
        return signum, bool(due)

    def saved(self) -> None:
        """A checkpoint was written: the recovery interval counts from now."""
        self.last_save = time.monotonic()
