"""The parts of tools/gpu_check.py. Each runs in a process of its own and writes
OUT/<part>.json: passed, a one-line summary, its checks, its figures and a Markdown section.

`--smoke` runs every part on whatever device there is with tiny shapes (mLiT-micro, small
batches, fp32 on the CPU), so the script is exercised by the test suite before a GPU is.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import torch

from mlit.errors import first_line

from gpu_check_common import ROOT, Part, device, dtype_name
from gpu_check_train import attention_kernels, profile_steps, train_variants


# -- env --------------------------------------------------------------------------------------
def part_env(part: Part, smoke: bool, out: Path) -> None:
    import numpy
    import triton

    f = part.figures
    f.update(python=platform.python_version(), torch=torch.__version__,
             triton=triton.__version__, numpy=numpy.__version__, cuda=torch.version.cuda,
             cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available()
             else None)
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        f.update(device=f"{props.name}, {props.total_memory / 2**30:.0f} GiB, "
                        f"sm_{props.major}{props.minor}", driver=nvidia_driver(),
                 sdpa={"flash": torch.backends.cuda.flash_sdp_enabled(),
                       "memory_efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
                       "cudnn": torch.backends.cuda.cudnn_sdp_enabled(),
                       "math": torch.backends.cuda.math_sdp_enabled()})
    else:
        f.update(device=f"CPU ({platform.processor() or platform.machine()}), no CUDA",
                 driver=None)
    part.check("CUDA device", smoke or torch.cuda.is_available(),
               "" if torch.cuda.is_available() else "no CUDA device (--smoke allows that)")
    part.table(["what", "value"], [[k, v] for k, v in f.items()])
    part.summary = f["device"]


def nvidia_driver() -> str | None:
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version",
                               "--format=csv,noheader"], capture_output=True, text=True,
                              timeout=20)
        return done.stdout.strip().splitlines()[0] if done.returncode == 0 else None
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return None


# -- kernel -----------------------------------------------------------------------------------
def part_kernel(part: Part, smoke: bool, out: Path) -> None:
    """The Triton MoE kernel against the float32 reference (mlit.model.kernel_check) at the
    tests' shapes, both arrangements, every dtype; then the custom op's opcheck."""
    from mlit.kernels.moe import moe_hidden
    from mlit.model import kernel_check

    dev = device()
    dtypes = [torch.float32] if smoke else [torch.float32, torch.float16, torch.bfloat16]
    shapes = ({k: kernel_check.SHAPES[k] for k in ("tiny", "odd_widths")} if smoke
              else kernel_check.SHAPES)
    rows = []
    for shared in ("v_w2", "w_w2"):
        for dtype in dtypes:
            for label, shape in shapes.items():
                inputs = kernel_check.routed_inputs(*shape, device=dev)
                inputs = kernel_check.as_w_w2(inputs) if shared == "w_w2" else inputs
                cmp = kernel_check.compare(inputs, dtype, shared)
                name, error = cmp.worst
                tol = kernel_check.TOLERANCE[dtype]
                part.check(f"{shared} {dtype_name(dtype)} {label}", cmp.passed,
                           f"{name} {error:.2e} (allowed {tol:.0e})")
                rows.append([shared, dtype_name(dtype), label, shape, name, f"{error:.2e}",
                             f"{tol:.0e}", "ok" if cmp.passed else "**FAILED**"])
    part.markdown.append(f"Device {dev}; error = max |kernel - reference| / max |reference| "
                         "per tensor (output and every gradient), the worst tensor shown.\n")
    part.table(["shared", "dtype", "shape", "(N, d, h, E)", "worst", "error", "allowed",
                "result"], rows)
    for dtype in dtypes[:1] + ([torch.bfloat16] if dev.type == "cuda" else []):
        x, gates, w, b, v, c, *_ = kernel_check.routed_inputs(20, 16, 8, 3, device=dev)
        for swish_shared in (False, True):
            args = (x.to(dtype).requires_grad_(), gates, w.to(dtype).requires_grad_(),
                    b.to(dtype), v.to(dtype), c.to(dtype), swish_shared)
            try:
                torch.library.opcheck(moe_hidden, args, test_utils=(
                    "test_schema", "test_autograd_registration", "test_faketensor"))
                ok, detail = True, ""
            except Exception as err:  # opcheck raises OpCheckError and others
                ok, detail = False, first_line(err, 200)
            part.check(f"opcheck {dtype_name(dtype)} swish_shared={swish_shared}", ok, detail)
    part.markdown.append(f"`torch.library.opcheck` (schema, autograd registration, fake "
                         f"tensor): {sum(c['passed'] for c in part.checks if 'opcheck' in c['name'])}"
                         f" of {sum('opcheck' in c['name'] for c in part.checks)} passed.")


# -- train ------------------------------------------------------------------------------------
def part_train(part: Part, smoke: bool, out: Path) -> None:
    train_variants(part, smoke, out)
    attention_kernels(part, smoke)


# -- bench ------------------------------------------------------------------------------------
GOALS = {"moe_vs_best": 1.3, "moe_vs_naive": 5.0, "mae_epoch_s": 0.5, "finetune_epoch_s": 1.5,
         "input_pct": 5.0}


def bench_commands(smoke: bool, out: Path) -> dict[str, list[str]]:
    py, tools = sys.executable, ROOT / "tools"
    if smoke:
        return {"bench_moe": [py, str(tools / "bench_moe.py"), "--quick", "--no-compile",
                              "--models", "mlit_xxs", "--min-time", "0.01",
                              "--json", str(out / "bench_moe.json")],
                "bench_train": [py, str(tools / "bench_train.py"), "--quick", "--no-compile",
                                "--variants", "fast-device", "--rounds", "1", "--steps", "1",
                                "--json", str(out / "bench_train.json")]}
    return {"bench_moe": [py, str(tools / "bench_moe.py"), "--step", "--dtypes", "bf16",
                          "--models", "mlit_s", "--min-time", "0.2",
                          "--json", str(out / "bench_moe.json")],
            # mLiT-S, whose goals these are, also compiled; XS and XXS eager (time)
            "bench_train": [py, str(tools / "bench_train.py"), "--models", "mlit_s",
                            "--variants", "torch-dataloader,fast-device,fast-device-compiled",
                            "--json", str(out / "bench_train.json")],
            "bench_train_small": [py, str(tools / "bench_train.py"), "--models",
                                  "mlit_xs,mlit_xxs", "--variants", "fast-device",
                                  "--json", str(out / "bench_train_small.json")]}


def shown(cmd: list[str]) -> str:
    """A benchmark's command as a user types it: from the repository, without --json PATH."""
    args = cmd[1:]
    if "--json" in args:
        i = args.index("--json")
        args = args[:i] + args[i + 2:]
    return "python " + " ".join(str(Path(a).relative_to(ROOT)) if a.startswith(str(ROOT))
                                else a for a in args)


def part_bench(part: Part, smoke: bool, out: Path) -> None:
    figures, outputs = {}, []
    for name, cmd in bench_commands(smoke, out).items():
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        print(f"$ {shown(cmd)}\n{done.stdout}{done.stderr}", flush=True)
        if part.check(f"{name} ran", done.returncode == 0,
                      (done.stderr.strip().splitlines() or [""])[-1][:200]):
            figures[name] = json.loads((out / f"{name}.json").read_text())
        outputs += [f"`{shown(cmd)}`", "", "```", done.stdout.rstrip(), "```", ""]
    part.figures = goals(figures)
    rows = [[g["goal"], g["measured"], g["verdict"]] for g in part.figures["goals"]]
    part.markdown += ["Goals (a missed goal is reported as missed; it does not fail the part):",
                      ""]
    part.table(["goal", "measured", "verdict"], rows)
    peaks = part.figures["peak_mib"]
    if peaks:
        part.table(["peak GPU memory of a training step", "MiB"],
                   [[k, f"{v:.0f}"] for k, v in peaks.items()])
    part.markdown += outputs
    met = sum(g["verdict"] == "met" for g in part.figures["goals"])
    part.summary = f"{met}/{len(rows)} goals met"


def goals(figures: dict) -> dict:
    """Each goal against its measured figure; 'not measured' off CUDA."""
    moe = figures.get("bench_moe", {})
    train = [r for key in ("bench_train", "bench_train_small")
             for r in figures.get(key, {}).get("rows", [])]
    on_gpu = "CPU" not in moe.get("device", "CPU")
    found = []

    def add(goal, value, ok, unit=""):
        verdict = "not measured (no GPU)" if not on_gpu or value is None else \
            ("met" if ok else "missed")
        found.append({"goal": goal, "measured": "-" if value is None else f"{value:.3g}{unit}",
                      "verdict": verdict, "value": value})

    layers = [r for r in moe.get("rows", []) if r["kind"] == "layer"
              and r["layer"].startswith("mlit_s")]
    vs_best, vs_naive = [], []
    for key in {(r["layer"], r["N"]) for r in layers}:
        same = {r["impl"]: r["fwd_bwd_ms"] for r in layers if (r["layer"], r["N"]) == key}
        if "triton" in same:
            best = min(t for i, t in same.items() if i != "triton")
            vs_best.append(best / same["triton"])
            vs_naive.append(same["naive"] / same["triton"])
    add("Triton MoE fwd+bwd vs best dense, mLiT-S shapes (worst)", min(vs_best, default=None),
        min(vs_best, default=0) >= GOALS["moe_vs_best"], "x (goal 1.3x)")
    add("Triton MoE fwd+bwd vs naive loop, mLiT-S shapes (worst)", min(vs_naive, default=None),
        min(vs_naive, default=0) >= GOALS["moe_vs_naive"], "x (goal 5x)")
    for step, goal, limit in (("mae", "mmLiT-S MAE epoch, 50k images, batch 840", "mae_epoch_s"),
                              ("finetune", "mLiT-S fine-tuning epoch, batch 448",
                               "finetune_epoch_s")):
        rows = [r for r in train if r["model"] == "mlit_s" and r["step"] == step]
        best = min((r["epoch_50k_s"] for r in rows), default=None)
        add(goal, best, best is not None and best <= GOALS[limit],
            f" s (goal {GOALS[limit]} s)")
    device_rows = [r for r in train if r["model"] == "mlit_s" and "device" in r["variant"]]
    worst_input = max((r["input_pct"] for r in device_rows), default=None)
    add("input share of an mLiT-S step, device pipeline (worst)", worst_input,
        worst_input is not None and worst_input < GOALS["input_pct"], "% (goal < 5%)")
    peaks = {f"{r['model']} {r['step']} batch {r['batch']} ({r['variant']})": r["peak_mib"]
             for r in train if r.get("peak_mib") is not None}
    return {"goals": found, "peak_mib": peaks, "raw": figures}


# -- profile ----------------------------------------------------------------------------------
# every part: (part, smoke, out) -> None, filling `part`
PARTS = {"env": part_env, "kernel": part_kernel, "train": part_train, "bench": part_bench,
         "profile": profile_steps}


def run(name: str, out: Path, smoke: bool) -> int:
    part = Part(name)
    PARTS[name](part, smoke, out)
    result = part.result()
    (out / f"{name}.json").write_text(json.dumps(result, indent=1, default=str))
    print(f"[{name}] {result['summary']}")
    return 0 if result["passed"] else 1
