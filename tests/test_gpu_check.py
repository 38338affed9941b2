"""tools/gpu_check.py end to end on the CPU (--smoke), so the GPU check cannot rot before a
GPU runs it: every part, its report, reruns of some parts, time limits and bad arguments."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import tool, tool_main

# the tests that start the tool's processes are `slow` (the full suite, not the quick tier);
# what it says about its arguments and folder is checked in this process, in both

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


@pytest.mark.slow
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


@pytest.mark.slow
def test_report_reads_as_the_benchmarks_page(smoke):
    out, _ = smoke
    text = (out / "report.md").read_text()
    assert text.startswith("# Benchmarks and GPU checks\n")
    for name in PARTS:
        assert f"\n## {name}\n" in text and f"| {name} | passed |" in text
    assert "`python tools/bench_moe.py --quick --no-compile --models mlit_xxs" in text
    assert "| mmLiT-S MAE epoch, 50k images, batch 840 | - | not measured (no GPU) |" in text


@pytest.mark.slow
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
def test_bad_arguments_are_argparse_errors(monkeypatch, capsys, args, message):
    status, _, err = tool_main("gpu_check", args, monkeypatch, capsys)  # before any part
    assert status == 2 and message in err
    assert err.startswith("usage: gpu_check.py")


@pytest.mark.slow
def test_a_damaged_part_file_is_reported_and_the_rest_kept(smoke, tmp_path):
    out, _ = smoke
    copy = tmp_path / "out"
    __import__("shutil").copytree(out, copy)
    (copy / "bench.json").write_text('{"part": "bench", "passed": tr')  # killed mid-write
    (copy / "env.json").write_text('{"part": "env"}')
    report = tool("gpu_check").write_report(copy, ["--only", "kernel"])
    assert not report["passed"] and list(report["parts"]) == PARTS  # the others kept
    assert report["parts"]["bench"]["summary"].startswith(f"its result {copy / 'bench.json'} "
                                                          "is damaged (")
    assert report["parts"]["env"]["summary"] == (
        f"its result {copy / 'env.json'} is damaged (it lacks checks, figures, markdown, "
        "passed, summary); run it again with --only env")


def test_an_unwritable_out_and_a_limit_past_its_bound_are_one_line(monkeypatch, capsys,
                                                                     tmp_path):
    (tmp_path / "file").write_text("")
    status, _, err = tool_main("gpu_check", ["--out", str(tmp_path / "file" / "sub")],
                               monkeypatch, capsys)
    assert status == 2 and err == (
        f"gpu_check: --out {tmp_path / 'file' / 'sub'}: {tmp_path / 'file'} is a file, not a "
        "folder\n")
    status, _, err = tool_main("gpu_check", ["--limit", "env=1e6"], monkeypatch, capsys)
    assert status == 2 and "SECONDS above 0 and below 100000" in err


@pytest.mark.slow
@pytest.mark.parametrize("sig, status", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_stops_the_running_part_too(tmp_path, sig, status):
    import signal
    import time

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.Popen([sys.executable, str(TOOL), "--smoke", "--only", "train",
                             "--out", str(tmp_path)], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (tmp_path / "train.log").exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(3)  # the part is importing torch, or training
    children = subprocess.run(["pgrep", "-f", "--", f"--part train --out {tmp_path}"],
                              capture_output=True, text=True).stdout.split()
    assert children, "the train part did not start"
    proc.send_signal(getattr(signal, sig))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == status
    assert err.strip().splitlines()[-1].startswith(
        f"gpu_check: interrupted by {sig} while running the train part; the parts that "
        f"finished are in {tmp_path}")
    time.sleep(0.5)
    alive = subprocess.run(["pgrep", "-f", "--", f"--part train --out {tmp_path}"],
                           capture_output=True, text=True).stdout.split()
    assert alive == [], "the part was left running"
