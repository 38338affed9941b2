"""How long each command takes to say anything, against `import torch`, side by side in one
run: `--help` and one bad input (a missing file, or a flag no tool has) of every command
(`python -m mlit.train|eval|export|plot|zoo|shape`) and every tool in tools/.

    python tools/bench_startup.py              # best of 3 runs of each, a table
    python tools/bench_startup.py --repeat 5 --json startup.json

Each figure is the wall time of a fresh process, the best of --repeat runs (the runs take the
commands in turn, so a busy moment hurts one run, not one command); `x torch` is that time
over the best `python -c "import torch"`. The goal is 1.25x: a command imports what it needs
when it needs it (docs/contributing.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOAL = 1.25
COMMANDS = {  # the bad input each command answers in one line
    "mlit.train": ["nosuch.yaml"],
    "mlit.eval": ["nosuch.pt"],
    "mlit.export": ["nosuch.pt", "out.safetensors"],
    "mlit.plot": ["nosuch_run"],
    "mlit.zoo": ["plan", "nosuch.yaml"],
    "mlit.shape": ["plan", "nosuch.yaml"],
}
# a tool's parts, imported by the tool that runs them: not commands of their own
PARTS = ("gpu_check_common", "gpu_check_parts", "gpu_check_train", "bench_infer_models",
         "bench_infer_report", "bench_train_inputs")


def tool_scripts() -> list[Path]:
    """Every tool a user runs as `python tools/NAME.py`."""
    return [p for p in sorted((ROOT / "tools").glob("*.py")) if p.stem not in PARTS]


def cases() -> list[tuple[str, list[str]]]:
    """(label, argv) of every case, `import torch` first."""
    found = [("import torch", ["-c", "import torch"])]
    for module, bad in COMMANDS.items():
        found += [(f"{module} --help", ["-m", module, "--help"]),
                  (f"{module} {' '.join(bad)}", ["-m", module, *bad])]
    for tool in tool_scripts():
        found += [(f"tools/{tool.name} --help", [str(tool), "--help"]),
                  (f"tools/{tool.name} --nosuch", [str(tool), "--nosuch"])]
    return found


def time_once(argv: list[str], cwd: Path) -> tuple[float, int]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *argv], cwd=cwd, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return time.perf_counter() - start, done.returncode


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs of each case (best kept)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error(f"--repeat {args.repeat}: must be at least 1")
    import tempfile

    todo = cases()
    best: dict[str, float] = {}
    status: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as cwd:  # relative bad paths resolve to nothing
        for _ in range(args.repeat):
            for label, case in todo:
                seconds, status[label] = time_once(case, Path(cwd))
                best[label] = min(best.get(label, seconds), seconds)
    torch_s = best["import torch"]
    rows = [{"case": label, "seconds": round(best[label], 3), "exit": status[label],
             "x_torch": round(best[label] / torch_s, 2)} for label, _ in todo]
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}; best of {args.repeat} fresh processes")
    print(f"{'case':58s} {'seconds':>8s} {'x torch':>8s} {'exit':>5s}")
    for r in rows:
        mark = "" if r["x_torch"] <= GOAL or r["case"] == "import torch" else "  over"
        print(f"{r['case']:58s} {r['seconds']:8.2f} {r['x_torch']:8.2f} {r['exit']:5d}{mark}")
    over = [r for r in rows[1:] if r["x_torch"] > GOAL]
    print(f"{len(rows) - 1 - len(over)} of {len(rows) - 1} within {GOAL}x import torch "
          f"({torch_s:.2f} s)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
