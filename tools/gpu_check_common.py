"""What the parts of tools/gpu_check.py share: a Part collects its checks, figures and
Markdown; the device and the dtype names they report."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Part:
    name: str
    checks: list[dict] = field(default_factory=list)
    figures: dict = field(default_factory=dict)
    markdown: list[str] = field(default_factory=list)
    summary: str = ""

    def check(self, name: str, passed: bool, detail: str = "") -> bool:
        self.checks.append({"name": name, "passed": bool(passed), "detail": detail})
        return passed

    def table(self, header: list[str], rows: list[list]) -> None:
        self.markdown += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        self.markdown += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
        self.markdown.append("")

    def result(self) -> dict:
        failed = [c for c in self.checks if not c["passed"]]
        summary = self.summary or f"{len(self.checks) - len(failed)}/{len(self.checks)} checks"
        if failed:
            summary += "; failed: " + ", ".join(c["name"] for c in failed[:4])
        return {"part": self.name, "passed": not failed, "summary": summary,
                "checks": self.checks, "figures": self.figures,
                "markdown": "\n".join(self.markdown) + "\n"}


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
