"""tools/gpu_check.py end to end on the CPU (--smoke), so the GPU check cannot rot before a
GPU runs it: every part, its report, reruns of some parts, time limits and bad arguments."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
TOOL = ROOT / "tools" / "gpu_check.py"
PARTS = ["env", "kernel", "train", "bench", "profile"]


def gpu_check(*args, timeout=900):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the tool sets it
    return subprocess.run([sys.executable, str(TOOL), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    return out, gpu_check("--smoke", "--out", str(out))


def test_smoke_runs_every_part_and_passes(smoke):
    out, done = smoke
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((out / "report.json").read_text())
    assert list(report["parts"]) == PARTS and report["passed"]
    for name in PARTS:
        assert (out / f"{name}.log").stat().st_size > 0
        assert report["parts"][name]["passed"], report["parts"][name]["summary"]
    kernel = report["parts"]["kernel"]["checks"]
    assert {c["name"] for c in kernel} >= {"v_w2 float32 odd_widths", "w_w2 float32 tiny",
                                          "opcheck float32 swish_shared=True"}
    train = {c["name"]: c for c in report["parts"]["train"]["checks"]}
    assert train["fp32: finetune loss finite and falling"]["passed"]
    assert train["fp32: no recompilation after warm-up"]["detail"] == \
        "0 graphs compiled after the first epoch"
    attention = report["parts"]["train"]["figures"]["attention"]
    assert {k: v["head_dim"] for k, v in attention.items()} == {
        "mlit_s encoder": 18, "mlit_xs encoder": 16, "mlit_xxs encoder": 18, "decoder": 18}
    goals = report["parts"]["bench"]["figures"]["goals"]
    assert len(goals) == 5 and {g["verdict"] for g in goals} == {"not measured (no GPU)"}
    profile = report["parts"]["profile"]["figures"]
    assert len(profile["mae"]["top"]) == 10 and profile["finetune"]["total_ms"] > 0


def test_report_reads_as_the_benchmarks_page(smoke):
    out, _ = smoke
    text = (out / "report.md").read_text()
    assert text.startswith("# Benchmarks and GPU checks\n")
    for name in PARTS:
        assert f"\n## {name}\n" in text and f"| {name} | passed |" in text
    assert "`python tools/bench_moe.py --quick --no-compile --models mlit_xxs" in text
    assert "| mmLiT-S MAE epoch, 50k images, batch 840 | - | not measured (no GPU) |" in text


def test_only_reruns_some_parts_and_a_part_out_of_time_is_reported(smoke):
    out, _ = smoke
    before = json.loads((out / "report.json").read_text())["parts"]["train"]
    done = gpu_check("--smoke", "--out", str(out), "--only", "kernel,env",
                     "--limit", "kernel=0.01", timeout=300)
    assert done.returncode == 1
    assert "[kernel] FAILED" in done.stdout and "[env] passed" in done.stdout  # env still ran
    assert done.stdout.index("[env] running") < done.stdout.index("[kernel] running")
    report = json.loads((out / "report.json").read_text())
    assert report["parts"]["kernel"]["summary"].startswith("ran out of time after 0 s")
    assert report["parts"]["train"] == before and not report["passed"]
    assert "| kernel | **failed** |" in (out / "report.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["--only", "kernels"], "argument --only: unknown part kernels; choose from env, kernel"),
    (["--limit", "train=-5"], "argument --limit: 'train=-5': expected PART=SECONDS"),
])
def test_bad_arguments_are_argparse_errors(args, message):
    done = gpu_check(*args, timeout=60)
    assert done.returncode == 2 and message in done.stderr
    assert done.stderr.startswith("usage: gpu_check.py")
