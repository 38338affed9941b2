"""How every command ends: one line on stderr that names the file, field or flag, and an exit
status; never a traceback for an error raised on purpose (the table is in mlit/errors.py and
docs/commands.md: 0 done, 1 a fault, 2 bad input, 3 work left, 130/143 interrupted).

Every command's `main` hands its body to `run_command`, which prints the line of any
`mlit.errors` error (its `line()`) and returns its status; an exception that is none of the
project's is a bug and keeps its traceback. Numeric flags are checked by argparse types
(`number`), and the zoo's and the shape sweep's launcher flags are declared once
(`launcher_flags`); output paths are checked by mlit/files/paths.py, before any work.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import signal
import sys

from mlit import distributed
from mlit.distributed import world
from mlit.errors import Interrupted, status_line


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


def run_command(prog: str, body) -> int:
    """body() is the command's work and returns its exit status; what it raises on purpose
    becomes one line on stderr, `prog: ...`, and that error's status."""
    with signals_as_interrupts():
        try:
            return body()
        except BaseException as raised:
            err = distributed.teardown_or(raised)
            known = status_line(err)
            if known is None:
                raise  # a bug: its traceback is what a report needs
            status, line = known
            say(prog, err, status, line)
            return status


def say(prog: str, err: BaseException, status: int, line: str) -> None:
    """The error's one line. In a run of several processes: a cause of this rank's own names
    the rank and is announced to the others (distributed.announce); one that is the same on
    every rank (rank_label "") is said by rank 0 alone; a rank that stopped because another
    did (PeerStopped) says nothing; under `mlit.train --nproc-per-node` each rank reports to
    the launcher instead, which prints the job's one line."""
    w = world()
    ending = ("peer" if isinstance(err, distributed.PeerStopped) else
            "lost" if isinstance(err, distributed.LostPeers) else
            "interrupt" if isinstance(err, Interrupted) else "cause")
    label = getattr(err, "rank_label", None)
    if label is None:
        label = str(w) if w.distributed else ""
    if w.distributed and ending in ("cause", "interrupt"):
        distributed.announce(status, line, interrupted=ending == "interrupt")
    if distributed.report_dir() is not None:
        distributed.write_report(status, line or str(err), ending, label)
        return
    if not line or (w.distributed and label == "" and not w.writer):
        return
    print(f"{prog}{f' [{label}]' if label else ''}: {line}", file=sys.stderr)


# -- numeric flags ----------------------------------------------------------------------------
def model_names(text: str) -> list[str]:
    """An argparse type: a comma list of registered model names (mlit.CONFIGS)."""
    from mlit.model.registry import CONFIGS

    names = [n for n in text.split(",") if n]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{(unknown or [text])[0]!r} is not a model; choose "
                                         f"from {', '.join(CONFIGS)}")
    return names


def number(cast=float, low: float | None = None, high: float | None = None,
           low_open: bool = False):
    """An argparse type: a finite `cast` (int or float) in [low, high] (low excluded when low_open)."""
    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {describe()}") from None
        if cast is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not {describe()}")
        below = low is not None and (value <= low if low_open else value < low)
        if below or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{text!r} is not {describe()}")
        return value

    def describe() -> str:
        what = "an integer" if cast is int else "a finite number"
        if low is not None and high is not None:
            return f"{what} in {'(' if low_open else '['}{low:g}, {high:g}]"
        if low is not None:
            return f"{what} {'above' if low_open else 'of at least'} {low:g}"
        return what

    parse.__name__ = "number"
    return parse


def numbers(cast=int, low: float | None = 1):
    """An argparse type: a comma list of `number(cast, low)`s, sorted, each once (thread
    counts, token counts)."""
    check = number(cast, low)

    def parse(text: str) -> list:
        return sorted({check(t) for t in text.split(",")})
    parse.__name__ = "numbers"
    return parse


def names_from(choices, what: str = "name"):
    """An argparse type: a comma list of names from `choices`, each once, in the order
    given (models, dtypes, arrangements); an unknown one is argparse's one-line error."""
    choices = [str(c) for c in choices]

    def parse(text: str) -> list[str]:
        given = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
        unknown = [n for n in given if n not in choices]
        if unknown or not given:
            problem = f"unknown {what} {', '.join(unknown)}" if unknown else f"no {what} given"
            raise argparse.ArgumentTypeError(f"{problem}; choose from {', '.join(choices)}")
        return given
    parse.__name__ = "names"
    return parse


def launcher_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of a command that trains many runs (the zoo, the shape sweep): which slice of
    the runs, and where they train (mlit.population)."""
    parser.add_argument("--shard", default="0/1",
                        help="i/n: run the i-th of n slices (0-based), e.g. a Slurm array task")
    parser.add_argument("--launcher", choices=["local", "ray"], default="local")
    parser.add_argument("--ray-address", default=None, help="an existing cluster, e.g. auto")
    parser.add_argument("--ray-cpus", type=number(int, 1), default=None,
                        help="CPUs of a local Ray cluster")
