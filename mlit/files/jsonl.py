"""JSON-lines logs (metrics.jsonl, a zoo model's result.json): one record a line, added by
rewriting the file whole through an atomic write, so after any crash a line is there in full
or not at all; and DamagedFile, the error for any file the project wrote earlier that can no
longer be read back (exit 2).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mlit.errors import BadInput
from mlit.files.atomic import write_text_atomic


class DamagedFile(BadInput):
    """A file the project wrote earlier that cannot be read back."""


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a JSON-lines file. A partial last line (a crash mid-write by an older
    writer) is dropped with a warning; a damaged line elsewhere is a DamagedFile error."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text(errors="replace").splitlines()
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                warn_partial(path)
                break
            raise DamagedFile(f"{path}: line {i + 1} is not JSON; the file is damaged") from None
        if not isinstance(record, dict):
            raise DamagedFile(f"{path}: line {i + 1} is not a JSON object")
        records.append(record)
    return records


def warn_partial(path: Path) -> None:
    print(f"warning: {path}: dropped a partial last line (a write that did not finish)",
          file=sys.stderr)


def jsonl_text(records: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def write_jsonl(path: str | Path, records: list[dict]) -> None:
    write_text_atomic(path, jsonl_text(records))


def append_jsonl(path: str | Path, record: dict) -> None:
    """Add one line. The file is rewritten whole (one small file per run, one line per
    epoch), so after any crash the line is either there in full or not at all; the lines
    already there are copied as text, not parsed again."""
    path = Path(path)
    text = path.read_text(errors="replace") if path.exists() else ""
    if text and not text.endswith("\n"):  # an older writer's partial last line
        warn_partial(path)
        text = text[: text.rfind("\n") + 1]
    write_text_atomic(path, text + json.dumps(record) + "\n")


def drop_epochs_after(path: Path, stage: str, after: int) -> None:
    """Drop a metrics file's lines of `stage` for epochs after `after`, written by a run
    killed before its next checkpoint; the file is rewritten whole, which also drops a
    partial last line."""
    if not path.exists():
        return
    keep = [r for r in read_jsonl(path)
            if not (r.get("stage") == stage and r.get("epoch", 0) > after)]
    if jsonl_text(keep) != path.read_text(errors="replace"):
        write_jsonl(path, keep)
