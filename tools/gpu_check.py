"""Every GPU check and benchmark of the project in one command, sized for a short GPU window.

    python tools/gpu_check.py                       # all parts, about 8 minutes on an H100/H200
    python tools/gpu_check.py --only train,profile  # rerun some parts; the report keeps the rest
    python tools/gpu_check.py --smoke               # the same script on the CPU, tiny shapes

Parts, in order (tools/gpu_check_parts.py): env (GPU, driver, CUDA, library versions, SDPA
backends), kernel (the Triton MoE kernel against the reference in fp32/fp16/bf16, opcheck),
train (recipes/mmlit_s.yaml on generated CIFAR-100 files: fp16, bf16, bf16 compiled with
CUDA graphs; losses, recompilations, CUDA-graph skips, host syncs, attention kernels), bench
(tools/bench_moe.py --step and tools/bench_train.py against the project's goals) and profile
(the ten costliest kernels of a compiled MAE step and a fine-tuning step).

Each part runs in its own process with its own time limit, writing OUT/<part>.log and
OUT/<part>.json; a part that fails or runs out of time is reported and the next still runs.
OUT/report.md (written to become docs/benchmarks.md as it is) and OUT/report.json cover every
part that has a result in OUT. Exit status 0 when every part passed, 1 otherwise, 2 for bad
arguments. A missed speed goal is a figure, not a failure: the report says met or missed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from mlit.cli import names_from, run_command  # noqa: E402
from mlit.errors import Interrupted, first_line  # noqa: E402
from mlit.files.paths import output_folder  # noqa: E402

# part -> seconds it may take on the GPU (8 minutes in all) and in --smoke on a CPU
LIMITS = {"env": (30, 60), "kernel": (60, 240), "train": (200, 240), "bench": (140, 240),
          "profile": (50, 120)}
PARTS = list(LIMITS)
MAX_LIMIT = 1e5  # seconds: a day and more is a typo
RESULT_KEYS = {"part", "passed", "summary", "checks", "figures", "markdown"}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_check"),
                        help="folder for report.md, report.json and one log per part")
    parser.add_argument("--only", type=part_list, default=PARTS,
                        help=f"comma list of parts to run ({', '.join(PARTS)})")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny shapes on whatever device there is (the kernel under "
                             "Triton's interpreter without a GPU): proves the script runs")
    parser.add_argument("--limit", action="append", default=[], type=part_limit,
                        metavar="PART=SECONDS", help="another time limit for one part")
    parser.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)  # a child process
    return parser.parse_args(argv)


def part_list(text: str) -> list[str]:
    names = names_from(PARTS, "part")(text)
    return [n for n in PARTS if n in names]  # in the order they run


def part_limit(text: str) -> tuple[str, float]:
    name, _, seconds = text.partition("=")
    try:
        value = float(seconds)
    except ValueError:
        value = -1.0
    if name not in LIMITS or not 0 < value < MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"{text!r}: expected PART=SECONDS with PART one of "
                                         f"{', '.join(PARTS)} and SECONDS above 0 and below "
                                         f"{MAX_LIMIT:.0f}")
    return name, value


# -- the parent: one child process per part ---------------------------------------------------
def run_part(name: str, out: Path, smoke: bool, limit: float) -> dict:
    """Run one part in a child process under its time limit; its result, or why it has none."""
    result_path = out / f"{name}.json"
    result_path.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--part", name, "--out", str(out)]
    cmd += ["--smoke"] if smoke else []
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if name == "kernel" and not cuda_available():
        env["TRITON_INTERPRET"] = "1"  # no GPU: the kernels run in Triton's interpreter
    start = time.time()
    with open(out / f"{name}.log", "w") as log:
        child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                 cwd=ROOT, start_new_session=True)
        try:
            code = child.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            stop(child)
            code = None
        except Interrupted as err:  # Ctrl-C or SIGTERM: the part must not keep the GPU busy
            stop(child)
            err.where = f"while running the {name} part"
            err.resume = (f"the parts that finished are in {out}: run again with --only "
                          "and the parts left")
            raise
    seconds = round(time.time() - start, 1)
    if code is None:
        result = failed(name, f"ran out of time after {limit:.0f} s (--limit {name}=SECONDS "
                              "gives it more)")
    elif result_path.exists():
        result = read_result(result_path, name)
    else:
        result = failed(name, f"exited with status {code} before writing its result: "
                              f"{last_line(out / f'{name}.log')}")
    result["seconds"] = seconds
    result_path.write_text(json.dumps(result, indent=1))
    return result


def stop(child: subprocess.Popen, grace: float = 5.0) -> None:
    """End a part and whatever it started (its own session): SIGTERM, then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, None)):
        try:
            os.killpg(child.pid, sig)
        except ProcessLookupError:
            return
        try:
            child.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def read_result(path: Path, name: str) -> dict:
    """A part's result file, or a failed result saying it is damaged (a part killed while
    writing it, a file edited by hand): the report keeps the other parts."""
    try:
        result = json.loads(path.read_text())
        if isinstance(result, dict) and RESULT_KEYS <= set(result):
            return result
        why = f"it lacks {', '.join(sorted(RESULT_KEYS - set(result)))}" \
            if isinstance(result, dict) else "not a JSON object"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        why = first_line(err)
    return failed(name, f"its result {path} is damaged ({why}); run it again with --only "
                        f"{name}")


def failed(name: str, why: str) -> dict:
    return {"part": name, "passed": False, "summary": why, "checks": [], "figures": {},
            "markdown": f"**Failed:** {why}\n"}


def last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(no output)"


def cuda_available() -> bool:
    import torch
    return torch.cuda.is_available()


# -- the report -------------------------------------------------------------------------------
def write_report(out: Path, argv: list[str]) -> dict:
    """report.md and report.json from every part's result in OUT (this run's and earlier)."""
    results = {n: read_result(out / f"{n}.json", n) for n in PARTS
               if (out / f"{n}.json").exists()}
    device = results.get("env", {}).get("figures", {}).get("device", "unknown device")
    report = {"command": "python tools/gpu_check.py " + " ".join(argv),
              "written": datetime.datetime.now().isoformat(timespec="seconds"),
              "device": device, "passed": all(r["passed"] for r in results.values()),
              "parts": results}
    (out / "report.json").write_text(json.dumps(report, indent=1))
    lines = ["# Benchmarks and GPU checks", "",
             f"Written by `{report['command']}` on {report['written']}; device: {device}.",
             "Each part's full output is in its log beside this report.", "",
             "| part | result | seconds | summary |", "|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {'passed' if r['passed'] else '**failed**'} | "
                     f"{r.get('seconds', '')} | {r['summary']} |")
    for name, r in results.items():
        lines += ["", f"## {name}", "", r["markdown"].rstrip()]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.part:  # child: run one part, write OUT/<part>.json
        import gpu_check_parts
        return gpu_check_parts.run(args.part, args.out, args.smoke)
    return run_command("gpu_check", lambda: check(args, argv))


def check(args, argv: list[str]) -> int:
    output_folder(args.out, "--out")  # before any part runs
    limits = {n: LIMITS[n][1 if args.smoke else 0] for n in PARTS} | dict(args.limit)
    for name in args.only:
        print(f"[{name}] running (limit {limits[name]:.0f} s)", flush=True)
        result = run_part(name, args.out, args.smoke, limits[name])
        print(f"[{name}] {'passed' if result['passed'] else 'FAILED'} in "
              f"{result['seconds']} s: {result['summary']}", flush=True)
    report = write_report(args.out, argv)
    print(f"wrote {args.out / 'report.md'} and {args.out / 'report.json'}: "
          f"{'every part passed' if report['passed'] else 'some part failed'}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
