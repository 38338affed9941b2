"""Every command answers --help and a bad input (every tool --help) with what torch brings and
little more, and so does a plan of every shipped sweep and zoo (it reads no image): the
libraries a command needs for its work (torchvision, timm, ONNX, matplotlib, Ray, TensorBoard,
...) are imported when the work starts (tools/bench_startup.py times it)."""

import subprocess
import sys
from pathlib import Path

from helpers import tool

ROOT = Path(__file__).parents[1]
HEAVY = ("torchvision", "timm", "onnx", "onnxruntime", "onnxscript", "matplotlib", "ray",
         "tensorboard", "safetensors", "scipy", "sklearn", "PIL", "networkx")
CASES = {  # the command's module, then its arguments: --help, and a missing input
    "mlit.train": [["--help"], ["nosuch.yaml"]],
    "mlit.eval": [["--help"], ["nosuch.pt"]],
    "mlit.export": [["--help"], ["nosuch.pt", "out.safetensors"]],
    "mlit.plot": [["--help"], ["nosuch_run"]],
    "mlit.zoo.__main__": [["--help"], ["plan", "nosuch.yaml"]],
    "mlit.shape.__main__": [["--help"], ["plan", "nosuch.yaml"]],
}
PLANS = {"mlit.shape.__main__": ["shape_sweep.yaml", "shape_sweep_digits.yaml"],
         "mlit.zoo.__main__": ["zoo.yaml"]}  # recipes/
PROBE = """
import contextlib, importlib, importlib.util, io, sys
cases = {cases!r}
for module, runs in cases.items():
    main = importlib.import_module(module).main
    for argv in runs:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            try:
                status = main(argv)
            except SystemExit as stop:
                status = stop.code
        assert status == (0 if argv == ["--help"] else 2), (module, argv, status)
for module, recipes in {plans!r}.items():
    for recipe in recipes:
        with contextlib.redirect_stdout(io.StringIO()) as out:
            status = importlib.import_module(module).main(["plan", {recipes!r} + "/" + recipe])
        assert status == 0 and out.getvalue(), (module, recipe, status)  # the table
sys.path.insert(0, {tools!r})  # each tool as python tools/NAME.py runs it: --help
for path in {tool_files!r}:
    spec = importlib.util.spec_from_file_location("tool", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            tool.main(["--help"])
        except SystemExit as stop:
            assert stop.code == 0, (path, stop.code)
print(sorted({{m.split(".")[0] for m in sys.modules}} & set({heavy!r})))
"""


def test_help_a_missing_input_and_the_shipped_plans_import_none_of_the_heavy_libraries(tmp_path):
    tools = [str(p) for p in tool("bench_startup").tool_scripts()]  # its parts left out
    code = PROBE.format(cases=CASES, heavy=HEAVY, tools=str(ROOT / "tools"), tool_files=tools,
                        plans=PLANS, recipes=str(ROOT / "recipes"))
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
