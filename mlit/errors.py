"""The project's errors, each carrying the exit status a command ends with.

    status  base           meaning
    0       -              done
    1       Fault          a fault at run time: a full disk, a lost mount or peer, a non-finite
                           loss, a kernel that fails its check, an export that fails its check
    2       BadInput       bad input, found before any work: a recipe, a flag, a dataset, a file
                           given or read back, a folder another process holds
    3       WORK_LEFT      (the zoo and the shape sweep) work left for another run
    130     Interrupted    Ctrl-C (SIGINT); 143 for SIGTERM, as clusters stop a job

Every error the project raises on purpose subclasses one of these where it is raised and
says in `line()` what the user reads; `mlit.cli.run_command` prints that line and returns
`status`. Anything else (a plain ValueError, a RuntimeError) is a bug and keeps its traceback.
This module imports nothing of mlit, so every layer can raise these.
"""

from __future__ import annotations

import contextlib
import signal

DONE, FAULT, BAD_INPUT, WORK_LEFT = 0, 1, 2, 3


class ProjectError(Exception):
    """An error raised on purpose: one line for the user and an exit status."""

    status = FAULT
    # which process says it in a run of several: None names this rank; "" names none (the
    # run's condition, the same on every rank); distributed.agreed sets it
    rank_label: str | None = None

    def line(self) -> str:
        return str(self)


class BadInput(ProjectError, ValueError):
    """Input that cannot be used (exit 2); the message names it and says what to do.
    A ValueError too, so callers of the library that catch ValueError still do."""

    status = BAD_INPUT


class Fault(ProjectError, RuntimeError):
    """Something failed at run time that is not the input's fault (exit 1)."""

    status = FAULT


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM (exit 128 + the signal). A runner that knows where it stopped fills
    `where` (e.g. 'in stage finetune at epoch 3 of 40') and `last_good` (the checkpoint a
    rerun resumes from). A KeyboardInterrupt, so `except Exception` never swallows it. The
    ranks of a run stop together, at the step they agree on (mlit/training/preemption.py),
    so rank 0 says it for all."""

    rank_label = ""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.where = ""
        self.last_good = ""
        self.resume = "run the same command again to resume"

    @property
    def status(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM

    def line(self) -> str:
        parts = [f"interrupted by {signal.Signals(self.signum).name}"
                 + (f" {self.where}" if self.where else "")]
        if self.last_good:
            parts.append(f"the last checkpoint is {self.last_good}")
        if self.resume:  # empty where a command writes nothing (a plan)
            parts.append(self.resume)
        return "; ".join(parts)

    def __str__(self) -> str:
        return self.line()


@contextlib.contextmanager
def nothing_to_resume():
    """An interrupt of work that writes nothing (a plan, a status) says where it stopped and
    nothing about resuming."""
    try:
        yield
    except Interrupted as err:
        err.resume = ""
        raise


def first_line(err: BaseException, limit: int = 120) -> str:
    """The first line of an error's message (its type's name when it has none), cut to
    `limit` characters: what a one-line report quotes of an error from a library."""
    text = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return text if len(text) <= limit else text[:limit] + "..."


def status_line(err: BaseException) -> tuple[int, str] | None:
    """(exit status, line) for an error raised on purpose, or an OSError (the machine refused
    a file: a permission, a lost mount); None for anything else, which is a bug."""
    if isinstance(err, (ProjectError, Interrupted)):
        return err.status, err.line()
    if isinstance(err, OSError):
        where = f" ({err.filename})" if err.filename else ""
        return FAULT, f"{err.strerror or err}{where}"
    return None
