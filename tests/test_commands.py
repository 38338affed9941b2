"""Every command keeps the one-line promise (mlit/cli.py): a table of bad inputs for each of
mlit.train, eval, export, load, plot, zoo and shape, each giving its exit status and one line
(argparse's two where argparse reports) that names the file, field or flag, never a
traceback; Ctrl-C and SIGTERM of a real training process; and files readable by others
under the usual umask."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import mlit
from mlit import eval as eval_cli
from mlit import export as export_cli
from mlit import plot as plot_cli
from mlit import train as train_cli
from mlit.files import checkpoint as ckpt
from mlit.files.checkpoint import CheckpointError
from mlit.shape import __main__ as shape_cli
from mlit.zoo import __main__ as zoo_cli

from helpers import tool, tool_main

ROOT = Path(__file__).parents[1]
QUICK = ["recipes/quickstart.yaml", "model.name=mlit_micro", "pretrain.warmup_epochs=0",
         "finetune.warmup_epochs=0", "train.progress=false"]
COMMANDS = {"train": train_cli.main, "eval": eval_cli.main, "export": export_cli.main,
            "plot": plot_cli.main, "zoo": zoo_cli.main, "shape": shape_cli.main}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished quickstart run of mLiT-micro and its export, written under umask 022."""
    out = tmp_path_factory.mktemp("run")
    old = os.umask(0o022)
    try:
        assert train_cli.main([*QUICK, f"train.out={out}", "pretrain.epochs=1",
                               "finetune.epochs=1"]) == 0
        assert export_cli.main([str(out / "finetune" / "checkpoint.pt"),
                                str(out / "model.safetensors")]) == 0
    finally:
        os.umask(old)
    return out


def call(command: str, args: list[str], capsys) -> tuple[int, list[str]]:
    """Exit status and stderr lines of one command, run in this process."""
    capsys.readouterr()
    try:
        code = COMMANDS[command](args)
    except SystemExit as exit_:  # argparse
        code = exit_.code
    return code, capsys.readouterr().err.strip().splitlines()


def assert_one_line(command, args, capsys, status, *words):
    code, lines = call(command, args, capsys)
    text = "\n".join(lines)
    assert "Traceback" not in text
    if lines and lines[0].startswith("usage:"):  # argparse's usage (maybe wrapped) and error
        assert lines[-1].startswith("python -m mlit.") and ": error: " in lines[-1], text
        assert all(line.startswith(" ") for line in lines[1:-1]), text
    else:
        assert len(lines) == 1 and lines[0].startswith(f"mlit.{command}: "), text
    assert code == status, text
    for word in words:
        assert word in lines[-1], (word, text)
    return lines[-1]


def edited_export(run: Path, tmp: Path, **metadata) -> Path:
    """The run's export with metadata fields replaced."""
    from safetensors import safe_open

    with safe_open(str(run / "model.safetensors"), framework="pt") as f:
        meta = f.metadata()
    path = tmp / "edited.safetensors"
    save_file(load_file(str(run / "model.safetensors")), str(path), {**meta, **metadata})
    return path


@pytest.mark.parametrize("command, args, words", [
    ("train", ["nope.yaml"], "recipe nope.yaml not found"),
    ("train", ["recipes"], "recipe recipes is a folder, not a recipe file"),
    ("train", ["/dev/null"], "recipe /dev/null is not a regular file"),
    ("eval", ["nope.pt"], "checkpoint nope.pt does not exist"),
    ("export", ["nope.pt", "o.safetensors"], "checkpoint nope.pt does not exist"),
    ("export", ["nope.pt", "o.onnx.txt"], "o.onnx.txt: the output must end in .safetensors"),
    ("plot", ["nope"], "nope: no metrics.jsonl or result.json (not a run folder)"),
    ("zoo", ["plan", "nope.yaml"], "nope.yaml not found"),
    ("zoo", ["run", "nope.yaml"], "nope.yaml not found"),
    ("zoo", ["status", "nope"], "nope: no such zoo folder"),
    ("zoo", ["analyze", "nope"], "nope: no such zoo folder"),
    ("zoo", ["status", "recipes/zoo.yaml"], "recipes/zoo.yaml: is a file, not a zoo folder"),
    ("shape", ["plan", "nope.yaml"], "nope.yaml not found"),
    ("shape", ["plan", "recipes"], "recipes is a folder, not a recipe file"),
    ("shape", ["run", "nope.yaml"], "nope.yaml not found"),
    ("shape", ["status", "nope.yaml"], "nope.yaml not found"),
    ("shape", ["fit", "nope.jsonl", "--dim", "d"], "nope.jsonl: no such results file"),
    ("shape", ["report", "nope"], "nope: no such sweep folder"),
    ("shape", ["report", "recipes/shape_sweep.yaml"], "shape_sweep.yaml: is a file, not a sweep"),
    ("shape", ["report", "recipes"], "recipes: no sweep.yaml (not a sweep folder"),
])
def test_every_command_names_a_missing_input(command, args, words, capsys):
    assert_one_line(command, args, capsys, 2, words)


@pytest.mark.parametrize("override, words", [
    ("foo=1", "foo: mlit.eval takes data.*, train.device, train.amp and batch_size"),
    ("batch_size=0", "batch_size=0: must be a positive integer"),
    ("data.dataset=nosuch", "data.dataset: Input should be 'cifar100', 'cifar10'"),
    ("data.nokey=3", "data.nokey: unknown key"),
    ("data.mean=[0.5, 0.5, 0.5]", "data.mean and data.std: give both, or neither"),
    ("train.amp=fp8", "train.amp: Input should be 'auto', 'fp16', 'bf16' or 'fp32'"),
])
def test_eval_names_a_bad_override_by_its_full_key(run, override, words, capsys):
    assert_one_line("eval", [str(run / "finetune" / "checkpoint.pt"), override], capsys, 2,
                    f"mlit.eval: {words}")


# -- 1. output paths ---------------------------------------------------------------------------
def test_output_paths_that_cannot_be_written(run, tmp_path, capsys):
    ckpt = str(run / "finetune" / "checkpoint.pt")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    (tmp_path / "folder.safetensors").mkdir()
    cases = [
        ("export", [ckpt, str(tmp_path / "folder.safetensors")], "is a folder"),
        ("export", [ckpt, str(a_file / "m.safetensors")], f"{a_file} is a file, not a folder"),
        ("export", [ckpt, "/proc/mlit-test/m.safetensors"], "cannot write there"),
        ("export", [ckpt, str(tmp_path / ("a" * 300 + ".safetensors"))],
         "is longer than 255 bytes"),
        ("eval", [ckpt, "--out", str(a_file)], f"--out {a_file}: is a file, not a folder"),
        ("eval", [ckpt, "--out", str(a_file / "sub")], "is a file, not a folder"),
        ("plot", [str(run), "--out", str(a_file)], f"--out {a_file}: is a file"),
        ("zoo", ["run", "recipes/zoo.yaml", "--zoo-dir", str(a_file)],
         f"--zoo-dir {a_file}: is a file"),
        ("shape", ["run", "recipes/shape_sweep_digits.yaml", "--sweep-dir", str(a_file)],
         f"--sweep-dir {a_file}: is a file"),
        ("train", ["recipes/quickstart.yaml", f"train.out={a_file}"],
         f"train.out {a_file}: is a file, not a folder"),
        ("train", ["recipes/quickstart.yaml", f"train.out={a_file / 'run'}"],
         f"train.out {a_file / 'run'}: {a_file} is a file, not a folder"),
        ("train", ["recipes/quickstart.yaml", "train.out=/proc/mlit-test/run"],
         "train.out /proc/mlit-test/run: cannot write there (No such file or directory)"),
        ("train", ["--nproc-per-node", "2", "recipes/quickstart.yaml", f"train.out={a_file}"],
         f"train.out {a_file}: is a file, not a folder"),
    ]
    for command, args, words in cases:
        assert_one_line(command, args, capsys, 2, words)
    assert not list(tmp_path.glob("a" * 50 + "*"))


# -- 2. exported files whose metadata was edited ------------------------------------------------
@pytest.mark.parametrize("metadata, words", [
    ({"model_config": "[1, 2]"}, "metadata model_config: must be a JSON object, not list"),
    ({"model_config": "{not json"}, "metadata model_config: not JSON (Expecting"),
    ({"model_name": "mlit_q"}, "metadata model_name: not a model mlit knows"),
    ({"kind": "decoder"}, "metadata kind: Input should be"),
])
def test_edited_export_metadata_is_named(run, tmp_path, capsys, metadata, words):
    path = edited_export(run, tmp_path, **metadata)
    for command, args in (("eval", [str(path)]), ("export", [str(path), str(tmp_path / "o.safetensors")])):
        assert_one_line(command, args, capsys, 2, str(path), words)
    with pytest.raises(CheckpointError, match=words.replace("(", r"\(").replace("[", r"\[")):
        mlit.load(path)


def test_an_unknown_model_config_field_is_refused(run, tmp_path, capsys):
    from safetensors import safe_open

    with safe_open(str(run / "model.safetensors"), framework="pt") as f:
        config = json.loads(f.metadata()["model_config"])
    path = edited_export(run, tmp_path, model_config=json.dumps({**config, "depht": 4}))
    assert_one_line("eval", [str(path)], capsys, 2, "model_config has fields mlit does not "
                    "know (depht)")
    path = edited_export(run, tmp_path, model_config=json.dumps({**config, "depth": "deep"}))
    assert_one_line("eval", [str(path)], capsys, 2, "model_config depth='deep': must be an "
                    "integer")


# -- 3. logs read back ---------------------------------------------------------------------------
def damaged_run(run: Path, tmp: Path, edit) -> Path:
    folder = tmp / "damaged_run"
    folder.mkdir(exist_ok=True)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    edit(records)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


@pytest.mark.parametrize("edit, words", [
    (lambda rs: rs[1].update(test_acc="high"), "record 2: test_acc='high': must be a number"),
    (lambda rs: rs[0].update(epoch=None), "record 1: epoch: Input should be a valid integer"),
    (lambda rs: rs[0].update(train_loss=[1]), "record 1: train_loss=[1]: must be a number"),
    (lambda rs: rs[1].pop("stage"), "record 2: stage: Field required"),
])
def test_plot_names_the_damaged_metrics_line(run, tmp_path, capsys, edit, words):
    folder = damaged_run(run, tmp_path, edit)
    assert_one_line("plot", [str(folder)], capsys, 2, f"{folder / 'metrics.jsonl'}: ", words)
    assert not (folder / "plots").exists()


def make_zoo(tmp: Path, result_text: str) -> Path:
    """A zoo of one backbone and one fine-tune marked done, the fine-tune's result.json
    replaced by `result_text`."""
    zoo = tmp / "zoo"
    for model, backbone in (("pretraining/mae_seed0", None),
                            ("finetuning/mae_seed0/ft", "pretraining/mae_seed0")):
        folder = zoo / model
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps({
            "backbone": backbone, "factors": {}, "stage": "finetune",
            "model": {"name": "mlit_micro"}, "recipe": {"finetune": {}}}))
        (folder / "status.json").write_text(json.dumps({"state": "done"}))
        (folder / "result.json").write_text(
            '{"stage": "finetune", "epoch": 0, "step": 0, "test_acc": 0.5}\n')
    (zoo / "finetuning/mae_seed0/ft/result.json").write_text(result_text)
    return zoo


@pytest.mark.parametrize("result_text, words", [
    ('{"stage": "finetune", "epoch": 0}\nnot json\n{"epoch": 1}\n', "line 2 is not JSON"),
    ('{"stage": "finetune", "epoch": 0, "test_acc": "high"}\n', "test_acc='high'"),
    ("", "no epoch recorded"),
])
def test_zoo_status_and_analyze_agree_on_a_damaged_result(tmp_path, capsys, result_text,
                                                          words):
    zoo = make_zoo(tmp_path, result_text)
    capsys.readouterr()
    assert zoo_cli.main(["status", str(zoo), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"damaged": ["finetuning/mae_seed0/ft"],
                                                   "done": ["pretraining/mae_seed0"]}
    code, lines = call("zoo", ["analyze", str(zoo)], capsys)
    assert code == 2 and len(lines) == 2 and "Traceback" not in "\n".join(lines)
    assert lines[0].startswith("warning: skipped finetuning/mae_seed0/ft: ") and words in lines[0]
    assert lines[1] == f"mlit.zoo: {zoo}: no finished fine-tunes to analyse"


def test_zoo_status_lists_a_damaged_model_with_its_reason(tmp_path, capsys):
    zoo = make_zoo(tmp_path, '{"stage": "finetune", "epoch": "one"}\n')
    capsys.readouterr()
    assert zoo_cli.main(["status", str(zoo)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{zoo}: 2 models; 1 damaged, 1 done"
    assert out[1].startswith("  damaged     finetuning/mae_seed0/ft: ")
    assert "result.json: record 1: epoch: Input should be a valid integer" in out[1]
    (tmp_path / "empty").mkdir()
    assert zoo_cli.main(["status", str(tmp_path / "empty")]) == 0
    assert capsys.readouterr().out == (f"{tmp_path / 'empty'}: no models yet (python -m "
                                       "mlit.zoo run writes them there)\n")


@pytest.mark.parametrize("line, words", [
    ({"d": 8, "compute": 1e10, "error": "high"}, "line 2: error: Input should be a valid number"),
    ({"d": 8, "compute": -1e10, "error": 0.1}, "line 2: compute: Input should be greater than 0"),
    ({"d": "wide", "compute": 1e10, "error": 0.1}, "line 2: d='wide': must be a positive number"),
    ({"d": 8, "error": 0.1}, "line 2: compute: Field required"),
])
def test_shape_fit_names_the_damaged_results_line(tmp_path, capsys, line, words):
    path = tmp_path / "results.jsonl"
    good = {"d": 16, "compute": 1e10, "error": 0.2}
    path.write_text(json.dumps(good) + "\n" + json.dumps(line) + "\n")
    assert_one_line("shape", ["fit", str(path), "--dim", "d"], capsys, 2, f"{path}: ", words)


# -- 4. numbers on the command line ------------------------------------------------------------
@pytest.mark.parametrize("command, args, words", [
    ("shape", ["fit", "r.jsonl", "--dim", "d", "--compute=-1e12"],
     "argument --compute: '-1e12' is not a finite number above 0"),
    ("shape", ["fit", "r.jsonl", "--dim", "d", "--compute", "nan"], "argument --compute: 'nan'"),
    ("shape", ["fit", "r.jsonl", "--dim", "d", "--compute", "0"], "argument --compute: '0'"),
    ("shape", ["report", "sweep", "--compute", "inf"], "argument --compute: 'inf'"),
    ("shape", ["run", "recipes/shape_sweep_digits.yaml", "--ray-cpus", "0"],
     "argument --ray-cpus: '0' is not an integer of at least 1"),
    ("zoo", ["analyze", "z", "--min-acc", "1.5"],
     "argument --min-acc: '1.5' is not a finite number in [0, 1]"),
    ("zoo", ["analyze", "z", "--window", "0"], "argument --window: '0' is not an integer"),
    ("zoo", ["analyze", "z", "--batch-size", "many"], "argument --batch-size: 'many'"),
    ("zoo", ["analyze", "z", "--mother-lambda", "-1"], "argument --mother-lambda: '-1'"),
    ("zoo", ["analyze", "z", "--mother-children", "0"], "argument --mother-children: '0'"),
    ("zoo", ["analyze", "z", "--longitudinal-models", "-2"], "--longitudinal-models: '-2'"),
    ("zoo", ["run", "recipes/zoo.yaml", "--ray-cpus", "1.5"], "argument --ray-cpus: '1.5'"),
    ("zoo", ["run", "recipes/zoo.yaml", "--shard", "4/4"], "mlit.zoo: --shard '4/4': needs"),
])
def test_numeric_flags_are_checked_for_their_range(command, args, words, capsys):
    assert_one_line(command, args, capsys, 2, words)


@pytest.mark.parametrize("name, args, words", [
    ("bench_onnx_chunks", ["--models", "nosuch"], "argument --models: 'nosuch' is not a model"),
    ("bench_onnx_chunks", ["--threads", "0"], "argument --threads: '0' is not an integer of "
                                              "at least 1"),
    ("bench_onnx_chunks", ["--threads", "-1"], "argument --threads: '-1'"),
    ("bench_onnx_attention", ["--model", "nosuch"], "argument --model: invalid choice"),
    ("bench_onnx_attention", ["--batch", "0"], "argument --batch: '0' is not an integer"),
    ("bench_onnx_attention", ["--batch", "-4"], "argument --batch: '-4' is not an integer"),
    ("bench_infer", ["--threads", "zero"], "argument --threads: 'zero' is not an integer"),
    ("bench_peak", ["--threads", "0"], "argument --threads: '0' is not an integer"),
    ("bench_startup", ["--repeat", "0"], "--repeat 0: must be at least 1"),
    ("bench_contention", ["--epochs", "0"], "--epochs 0: must be at least 1"),
    ("bench_train", ["--variants", "auto-device,nosuch"], "--variants: unknown nosuch; choose"),
    ("bench_memory", ["--batch", "0"], "argument --batch: '0' is not an integer of at least 1"),
    ("bench_memory", ["--model", "mlit_tiny"], "argument --model: invalid choice: 'mlit_tiny'"),
    ("bench_moe", ["--models", "mlit_s,nosuch"], "argument --models: unknown model nosuch; "
                                                 "choose from mlit_s, mlit_xs"),
    ("bench_moe", ["--dtypes", "fp8"], "argument --dtypes: unknown dtype fp8; choose from bf16"),
    ("bench_moe", ["--min-time", "-1"], "argument --min-time: '-1' is not a finite number"),
    ("kernel_report", ["--archs", "sm90"], "argument --archs: 'sm90' is not an integer"),
    ("kernel_report", ["--shared", "w_v"], "argument --shared: unknown arrangement w_v; choose "
                                           "from v_w2, w_w2"),
    ("kernel_report", [], "unset TRITON_INTERPRET (it replaces the kernels by the interpreter)"),
    ("param_count", ["--shared", "v_w2,vw2"], "argument --shared: unknown arrangement vw2"),
    ("gpu_check", ["--only", ","], "argument --only: no part given; choose from env, kernel"),
])
def test_the_tools_flags_are_checked_before_any_work(name, args, words, monkeypatch, capsys):
    status, out, err = tool_main(name, args, monkeypatch, capsys)
    lines = err.strip().splitlines()
    assert status == 2 and "Traceback" not in err and out == ""  # nothing before the error
    assert lines[-1].startswith(f"{name}.py: error: "), lines  # argparse's, by the tool's name
    assert words in lines[-1], lines


@pytest.mark.parametrize("device, dropped", [
    ("cpu", {"dense-device-compiled"}),
    ("cuda", {"fast-device", "auto-device-torchdrop", "vit-device-torchdrop"})])
def test_bench_train_times_each_code_path_once(device, dropped):
    """On CUDA auto is the Triton kernel (fast-device), and mlit's Dropout is torch's; on the
    CPU fast is dense, and the two compiled dense variants are one."""
    bench = tool("bench_train")
    every = bench.all_variants("triton" if device == "cuda" else "dense")
    kept = {v[0] for v in bench.distinct(every, device)}
    assert kept == {v[0] for v in every} - dropped


def test_bench_train_sets_each_mode_against_the_vit_of_that_mode():
    times = {"eager auto device": 1.25, "eager torch dataloader": 2.0, "compiled dense device":
             1.15, "eager auto device, AdamW loop": 1.3, "eager auto device, nn.Dropout": 1.4,
             "dense ViT eager device": 1.0, "dense ViT compiled device": 0.5,
             "dense ViT eager device, nn.Dropout": 1.12}
    vit_ratios = tool("bench_train").vit_ratios
    assert vit_ratios(times) == [
        "eager auto device: 1.25x the step time of the dense ViT (eager)",
        "compiled dense device: 2.30x the step time of the dense ViT (compiled)",
        "eager auto device, nn.Dropout: 1.25x the step time of the dense ViT (eager, "
        "nn.Dropout)"]
    assert vit_ratios({"eager auto device": 1.0}) == []  # no ViT timed


def test_bench_contention_sets_the_policy_of_the_run_alone(monkeypatch, tmp_path):
    """The other process keeps OpenMP's default whatever the run's policy (and whatever the
    caller's environment says), the run gets the policy's; --model's figures are read from
    bench_train's --json rows."""
    bench = tool("bench_contention")
    envs = {}

    class Process:
        def __init__(self, argv, env, **kwargs):
            envs["other"] = env

        def kill(self):
            pass

        def wait(self):
            pass

    def run(argv, env, **kwargs):
        envs["run"] = env
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(bench.subprocess, "Popen", Process)
    monkeypatch.setattr(bench.subprocess, "run", run)
    monkeypatch.setattr(bench.time, "sleep", lambda seconds: None)
    monkeypatch.setenv("GOMP_SPINCOUNT", "123")
    monkeypatch.setenv("OMP_WAIT_POLICY", "passive")
    bench.timed_run(["python"], True, 2, bench.policy_env("mlit", mlit.SPIN_ROUNDS))
    assert "GOMP_SPINCOUNT" not in envs["other"] and "OMP_WAIT_POLICY" not in envs["other"]
    assert envs["run"]["GOMP_SPINCOUNT"] == mlit.SPIN_ROUNDS
    assert "OMP_WAIT_POLICY" not in envs["run"]
    bench.timed_run(["python"], False, 2, bench.policy_env("default", mlit.SPIN_ROUNDS))
    assert "GOMP_SPINCOUNT" not in envs["run"]

    argv = bench.step_argv("mlit_s", tmp_path / "steps.json")
    assert argv[argv.index("--models") + 1] == "mlit_s"
    assert argv[argv.index("--json") + 1] == str(tmp_path / "steps.json")
    (tmp_path / "steps.json").write_text(json.dumps({"device": "CPU", "rows": [
        {"model": "mlit_s", "step": "mae", "ms_per_step": 370.5},
        {"model": "mlit_s", "step": "finetune", "ms_per_step": 817.25}]}))
    assert bench.step_times(tmp_path / "steps.json") == {"mae": 370.5, "finetune": 817.25}


def test_bench_contention_gives_every_run_a_fresh_folder(monkeypatch, capsys):
    """Each run trains into a folder of its own (a folder reused would resume a finished run),
    the best of the runs alone counts, and the table says each policy's ratios."""
    bench = tool("bench_contention")
    outs, seconds = [], iter([8.0, 9.0, 7.0, 7.5, 6.5, 9.5, 60.0, 13.0])

    def timed_run(argv, beside, threads, extra_env=None):
        outs.append(next(a for a in argv if a.startswith("train.out=")))
        return next(seconds)

    monkeypatch.setattr(bench, "timed_run", timed_run)
    assert bench.main(["--repeat", "3"]) == 0
    assert len(outs) == len(set(outs)) == 8
    out = capsys.readouterr().out
    assert re.search(r"OpenMP's default.*quickstart s +6\.5 +60\.0 +9\.23x", out), out
    assert re.search(r"mlit's commands .*quickstart s +7\.5 +13\.0 +1\.73x", out), out
    assert "alone / the default's alone 1.15x (goal <= 1.05); beside / alone 1.73x" in out


def test_bench_train_says_how_idle_openmp_threads_wait(monkeypatch):
    policy = tool("bench_train").openmp_idle_policy
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert policy().startswith("OpenMP's default")
    assert f"GOMP_SPINCOUNT={mlit.SPIN_ROUNDS}" in policy()  # what the commands set instead
    monkeypatch.setenv("GOMP_SPINCOUNT", "8000")
    assert policy() == "GOMP_SPINCOUNT=8000"


def test_check_layers_without_the_dev_extra_is_one_line(capsys, monkeypatch):
    import importlib.util

    module = tool("check_layers")
    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "importlinter" else found(name, *a))
    assert module.main([]) == 2
    assert capsys.readouterr().err == ("check_layers: import-linter is not installed: "
                                       "pip install -e '.[dev]'\n")


# -- 6. weights that hold NaN or infinity --------------------------------------------------------
def test_weights_with_nan_or_infinity_are_refused(run, tmp_path, capsys):
    state = torch.load(run / "finetune" / "checkpoint.pt", weights_only=False)
    name = next(iter(state["model"]))
    state["model"][name] = state["model"][name].clone().fill_(float("nan"))
    (tmp_path / "nan").mkdir()  # as a run that diverged before it saved would write it
    ckpt.save_atomic(state, tmp_path / "nan" / "checkpoint.pt")
    assert_one_line("eval", [str(tmp_path / "nan" / "checkpoint.pt"), "data.dataset=digits"],
                    capsys, 2, f"tensor {name} holds NaN")
    tensors = load_file(str(run / "model.safetensors"))
    key = sorted(tensors)[-1]
    tensors[key] = tensors[key].clone().fill_(float("inf"))
    from safetensors import safe_open
    with safe_open(str(run / "model.safetensors"), framework="pt") as f:
        meta = f.metadata()
    meta.pop("weights_sha256")  # as a file without a digest (an older export) would be
    save_file(tensors, str(tmp_path / "inf.safetensors"), meta)
    assert_one_line("eval", [str(tmp_path / "inf.safetensors")], capsys, 2,
                    f"tensor {key} holds infinity")
    with pytest.raises(CheckpointError, match="holds infinity"):
        mlit.load(tmp_path / "inf.safetensors")


# -- 7. the recipe.yaml beside a checkpoint ------------------------------------------------------
@pytest.mark.parametrize("text, words", [
    (b"data: [digits\n", "recipe.yaml: not valid YAML at line 2"),
    (b"data:\n  dataset: digits\ndata:\n  dataset: cifar10\n", "duplicate key 'data'"),
    (b"", "recipe.yaml is empty"),
    (b"\xff\xfe\x00binary", "recipe.yaml cannot be read (not text)"),
])
def test_a_broken_recipe_beside_the_checkpoint_is_named(run, tmp_path, capsys, text, words):
    folder = tmp_path / "copy" / "finetune"
    folder.mkdir(parents=True)
    (folder / "checkpoint.pt").write_bytes((run / "finetune" / "checkpoint.pt").read_bytes())
    (tmp_path / "copy" / "recipe.yaml").write_bytes(text)
    assert_one_line("eval", [str(folder / "checkpoint.pt")], capsys, 2,
                    str(tmp_path / "copy" / "recipe.yaml"), words)


# -- 8. a raw pickle ------------------------------------------------------------------------------
def test_a_raw_pickle_is_one_line_without_torchs_warning(tmp_path, capsys):
    import pickle

    (tmp_path / "raw.pt").write_bytes(pickle.dumps({"model": [1, 2]}, protocol=4))
    assert_one_line("eval", [str(tmp_path / "raw.pt")], capsys, 2,
                    "is not a readable checkpoint (a raw pickle: not the zip archive "
                    "torch.save writes)")


# -- files others can read -----------------------------------------------------------------------
def test_files_get_the_mode_the_umask_gives(run):
    for path in [run / "recipe.yaml", run / "metrics.jsonl", run / "summary.json",
                 run / "pretrain" / "checkpoint.pt", run / "finetune" / "checkpoint.pt",
                 run / "model.safetensors"]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == 0o644, (path, oct(mode))


# -- 5. Ctrl-C and SIGTERM ------------------------------------------------------------------------
EPOCHS = 8  # fine-tuning: the signal comes in epoch 3, with seconds of training left


def start_training(out: Path, epochs: int = EPOCHS) -> subprocess.Popen:
    args = [*QUICK, f"train.out={out}", "pretrain.epochs=2", f"finetune.epochs={epochs}",
            "finetune.checkpoint_every=1", "train.threads=1"]
    return subprocess.Popen([sys.executable, "-m", "mlit.train", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_epoch(out: Path, proc: subprocess.Popen, stage: str, epoch: int) -> None:
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        path = out / "metrics.jsonl"
        if path.exists() and any(json.loads(line).get("stage") == stage and
                                 json.loads(line)["epoch"] >= epoch
                                 for line in path.read_text().splitlines() if line.strip()):
            return
        time.sleep(0.1)
    raise AssertionError(f"no {stage} epoch {epoch} in time: {proc.communicate()}")


@pytest.mark.slow
@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_run_says_where_it_stopped_and_to_rerun_the_command(
        tmp_path, signum, status):
    out = tmp_path / "interrupted"
    proc = start_training(out)
    wait_for_epoch(out, proc, "finetune", 2)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    lines = err.strip().splitlines()
    assert proc.returncode == status, err
    name = signal.Signals(signum).name
    # after the step in flight, with a checkpoint of that step (tests/test_preemption.py), or,
    # when the signal came while an epoch ended, of that epoch
    where = re.fullmatch(
        rf"mlit.train: interrupted by {name} in stage finetune at step (\d+) of {22 * EPOCHS} "
        rf"\((?:end of )?epoch (\d+) of {EPOCHS}\); the last good checkpoint is "
        rf"{re.escape(str(out))}/finetune/checkpoint.pt "
        r"\((?:step (\d+), \d+ into epoch (\d+)|epoch (\d+))\); run the same command again "
        r"to resume", lines[-1])
    assert "Traceback" not in err and where, err
    if where[3] is not None:
        assert where[1] == where[3] and where[2] == where[4]
    else:
        assert int(where[1]) == 22 * int(where[5]) and int(where[2]) == int(where[5])
        assert "(end of epoch" in where[0]
    # that the same command then ends on the unbroken run's weights, after SIGINT to the
    # command's process (and to its loader workers) in either stage, is tests/test_preemption.py's


def test_interrupted_zoo_runs_say_which_model_and_resume(tmp_path, monkeypatch, capsys):
    """The zoo's runner under Ctrl-C: the model that was training is named, marked
    interrupted (not failed), and the line says the same command resumes."""
    from mlit.errors import Interrupted
    from mlit.population import runner

    def interrupt(*args, **kwargs):
        raise Interrupted(signal.SIGINT)

    monkeypatch.setattr(runner.StageRun, "run", interrupt)
    code, lines = call("zoo", ["run", "recipes/zoo.yaml", "model.name=mlit_micro",
                               "pretrain_data.dataset=digits", "pretrain_data.num_workers=0",
                               "--zoo-dir", str(tmp_path / "z")], capsys)
    assert code == 130 and len(lines) == 1, lines
    assert lines[0].startswith("mlit.zoo: interrupted by SIGINT while training pretraining/")
    assert "(model 1 of " in lines[0]
    assert lines[0].endswith("finished models are kept and this one resumes from its last "
                             "checkpoint: run the same command again")
    states = json.loads(next((tmp_path / "z").glob("pretraining/*/status.json")).read_text())
    assert states["state"] == "interrupted"
