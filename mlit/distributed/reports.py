"""What each rank tells `mlit.train --nproc-per-node` (mlit/training/launcher.py): its
outcome, in a file of the folder the launcher names, for the launcher to print the job's
one line."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from mlit.distributed.group import torchrun_rank

REPORT_ENV = "MLIT_REPORT_DIR"  # set by the launcher: ranks write their outcome there


def report_dir() -> Path | None:
    folder = os.environ.get(REPORT_ENV)
    return Path(folder) if folder and torchrun_rank() is not None else None


def write_report(status: int, line: str, ending: str, rank_label: str) -> None:
    """This rank's outcome for the launcher, which prints the one line of the job: its ending
    is cause, peer (stopped with another rank), lost (a peer went away) or interrupt."""
    folder = report_dir()
    record = {"rank": torchrun_rank(), "status": status, "line": line, "ending": ending,
              "rank_label": rank_label}
    with contextlib.suppress(OSError):
        (folder / f"rank{torchrun_rank()}.json").write_text(json.dumps(record))


def read_reports(folder: Path) -> dict[int, dict]:
    reports = {}
    for path in folder.glob("rank*.json"):
        with contextlib.suppress(OSError, ValueError):
            record = json.loads(path.read_text())
            reports[int(record["rank"])] = record
    return reports
