"""A stage's files: the checkpoint a rerun resumes from, the zoo's checkpoint of every epoch,
and the stage's lines of metrics.jsonl. Under torchrun rank 0 alone writes them (every rank
reads the checkpoint); each is written whole (mlit/files/atomic.py), so a rerun finds either
the last good checkpoint or none, and the records up to it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mlit.errors import NO_CHECKPOINT
from mlit.files import checkpoint as ckpt
from mlit.files.jsonl import append_jsonl, drop_epochs_after


class StageFiles:
    def __init__(self, kind: str, directory: Path, metrics_path: Path, writes: bool):
        self.kind, self.dir, self.metrics_path, self.writes = kind, directory, metrics_path, writes
        self.checkpoint = directory / "checkpoint.pt"
        self.saved_at = (0, 0)  # (epoch, step) of the last checkpoint written or read

    def save(self, state: Callable[[], dict], epoch: int, step: int) -> None:
        """The checkpoint at (epoch, step): the stage's whole state, made where it is written."""
        if self.writes:
            ckpt.save_atomic(state(), self.checkpoint)
        self.saved_at = (epoch, step)

    def save_epoch(self, record: Callable[[], dict], epoch: int) -> None:
        """The zoo keeps every epoch's weights: checkpoint_0000XY/model.pt."""
        if self.writes:
            ckpt.save_atomic(record(), ckpt.epoch_path(self.dir, epoch))

    def load(self) -> dict | None:
        """The last checkpoint, or None where the stage has none (a fresh start, whose
        records of any earlier attempt are dropped)."""
        if not self.checkpoint.exists():
            self.keep_records(upto=-1)
            return None
        state = ckpt.load(self.checkpoint)
        self.saved_at = (state["epoch"], state["step"])
        self.keep_records(upto=state["epoch"])
        return state

    def keep_records(self, upto: int) -> None:
        """Drop this stage's metrics.jsonl lines after epoch `upto` (a resumed run writes them
        again, so the file holds each epoch once)."""
        if self.writes:
            drop_epochs_after(self.metrics_path, self.kind, upto)

    def record(self, record: dict) -> None:
        if self.writes:
            append_jsonl(self.metrics_path, record)

    def last_good(self, steps_per_epoch: int) -> str:
        """The checkpoint a rerun resumes from, as an error line names it."""
        if not self.checkpoint.exists():
            return NO_CHECKPOINT
        epoch, step = self.saved_at
        inside = step - epoch * steps_per_epoch
        return f"{self.checkpoint} (" + (f"step {step}, {inside} into epoch {epoch + 1}"
                                         if inside else f"epoch {epoch}") + ")"
