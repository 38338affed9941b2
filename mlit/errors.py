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


NO_CHECKPOINT = "none yet"  # a run's last_good before its first checkpoint


class StopsARun:
    """What an error that stops a run part-way (a full disk, a non-finite loss, a signal)
    carries besides its message: where the run stopped, the checkpoint a rerun resumes from,
    and what to do. The runner's layers fill them on the error's way out, each with what it
    knows (`context`), and `with_context` says them in one form."""

    where = ""      # e.g. "in stage finetune at step 130 of 330 (epoch 12 of 30)"
    last_good = ""  # the checkpoint a rerun resumes from, NO_CHECKPOINT, or "" (not a run)
    resume = ""     # what to do next; "" says nothing

    def with_context(self, text: str) -> str:
        return stop_line(text, self.where, self.last_good, self.resume)


def stop_line(text: str, where: str, last_good: str, resume: str) -> str:
    """The one form of a stopped run's line: what, where; the checkpoint; what to do."""
    parts = [f"{text} {where}" if where else text]
    if last_good:
        parts.append(f"the last good checkpoint is {last_good}")
    if resume:
        parts.append(resume)
    return "; ".join(parts)


@contextlib.contextmanager
def context(where=None, last_good=None, resume=None):
    """Add what this layer of a run knows to an error that stops it, on the error's way out:
    `where` after an inner layer's (the stage, then the zoo's model), `last_good` from the
    innermost layer that knows it, `resume` from the outermost (it knows what a rerun does).
    A callable is called only when such an error passes."""
    try:
        yield
    except BaseException as err:
        if isinstance(err, StopsARun):
            def value(field):
                return field() if callable(field) else field
            if where is not None:
                err.where = " ".join(w for w in (err.where, value(where)) if w)
            if last_good is not None and not err.last_good:
                err.last_good = value(last_good)
            if resume is not None:
                err.resume = value(resume)
        raise


class Interrupted(KeyboardInterrupt, StopsARun):
    """SIGINT or SIGTERM (exit 128 + the signal); the runner fills where it stopped and the
    checkpoint a rerun resumes from (`context`). A KeyboardInterrupt, so `except Exception`
    never swallows it. The ranks of a run stop together, at the step they agree on
    (mlit/training/preemption.py), so rank 0 says it for all."""

    rank_label = ""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.resume = None  # None: what a rerun does follows from last_good; "": nothing

    @property
    def status(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM

    def line(self) -> str:
        started = self.last_good != NO_CHECKPOINT
        resume = self.resume
        if resume is None:
            resume = ("run the same command again to resume" if started else
                      "no checkpoint of this stage yet: run the same command again to start it "
                      "over" if self.where else
                      "no checkpoint yet: run the same command again to start over")
        return stop_line(f"interrupted by {signal.Signals(self.signum).name}", self.where,
                         self.last_good if started else "", resume)

    def __str__(self) -> str:
        return self.line()


@contextlib.contextmanager
def nothing_to_resume():
    """An interrupt of work that writes nothing (a plan, a status) says where it stopped and
    nothing about resuming."""
    with context(resume=""):
        yield


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
