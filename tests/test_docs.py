"""The repository explains itself: no reference to material outside it, and the files,
commands, subcommands and flags the documentation names exist."""

import re
import subprocess
from pathlib import Path

import pytest

from helpers import tool

ROOT = Path(__file__).parents[1]
SUFFIXES = (".py", ".md", ".yaml", ".toml")


def repository_files() -> list[Path]:
    """The repository's own files: what git tracks, and what it would add (untracked and not
    ignored), so a virtual environment or a build folder inside the checkout is not read."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [ROOT / name for name in listed.splitlines() if (ROOT / name).is_file()]


TEXT = [p for p in repository_files() if p.suffix in SUFFIXES]


def test_nothing_points_outside_the_repository():
    pattern = re.compile(r"shared/|SPEC [0-9]|SPEC\.md")
    offenders = [f"{p.relative_to(ROOT)}:{i + 1}" for p in TEXT
                 for i, line in enumerate(p.read_text(errors="replace").splitlines())
                 if pattern.search(line) and p.name != "test_docs.py"]
    assert offenders == []


def test_only_the_repositorys_own_files_are_read():
    assert ROOT / "tests" / "test_docs.py" in TEXT and ROOT / "README.md" in TEXT
    assert not [p for p in TEXT if {".venv", ".git", "build"} & set(p.relative_to(ROOT).parts)]


DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMAND = re.compile(r"python -m (mlit(?:\.\w+)?)((?: [^\s`|]+)*)")
TOOL = re.compile(r"python tools/(\w+)\.py((?: [^\s`|]+)*)")
FLAG = re.compile(r"(?<![\w-])(--[a-z][\w-]*)")


def test_the_files_the_docs_name_exist():
    assert {p.name for p in DOCS} >= {"README.md", "architecture.md", "recipes.md", "zoo.md"}
    named = {m for p in DOCS for m in re.findall(
        r"`((?:mlit|kernels|tools|tests|recipes|docs)/[\w/.]+\.(?:py|yaml|md))`",
        p.read_text())}
    assert named and [n for n in sorted(named) if not (ROOT / n).exists()] == []


def test_the_links_between_the_docs_resolve():
    """A Markdown link to a file is relative to the page that holds it (docs/x.md links
    `y.md`, README.md `docs/y.md`), as GitHub and a local viewer resolve it."""
    links = [(p, target.split("#")[0]) for p in DOCS
             for target in re.findall(r"\]\(([^)\s]+)\)", p.read_text())
             if not target.startswith(("http://", "https://", "#", "mailto:"))]
    assert len(links) > 30
    assert [f"{p.relative_to(ROOT)}: {t}" for p, t in links if not (p.parent / t).exists()] == []


def named(pattern) -> dict[tuple[str, str], set[str]]:
    """(program, subcommand or '') -> the --flags the documentation gives it."""
    found: dict[tuple[str, str], set[str]] = {}
    for path in DOCS:
        for line in path.read_text().splitlines():
            for prog, rest in pattern.findall(line):
                words = rest.split()
                sub = words[0] if words and words[0].isalpha() and prog in (
                    "mlit.zoo", "mlit.shape") else ""
                found.setdefault((prog, sub), set()).update(FLAG.findall(rest))
    return found


def help_text(main, argv) -> str:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        main(argv)
    return out.getvalue()


def test_the_commands_and_flags_the_docs_name_exist():
    import importlib

    commands = named(COMMAND)
    assert ("mlit.train", "") in commands and ("mlit.zoo", "analyze") in commands
    for (prog, sub), flags in sorted(commands.items()):
        module = importlib.import_module(prog if prog not in ("mlit.zoo", "mlit.shape")
                                         else f"{prog}.__main__")
        assert hasattr(module, "main"), f"python -m {prog}: not a command"
        if prog in ("mlit.zoo", "mlit.shape") and sub:
            assert sub in module.COMMANDS, f"python -m {prog} {sub}: no such subcommand"
        text = help_text(module.main, [sub, "--help"] if sub else ["--help"])
        missing = sorted(f for f in flags if f not in text and f != "--help")
        assert not missing, f"python -m {prog} {sub}: the docs name {missing}, it has none"


def test_the_tools_and_flags_the_docs_name_exist():
    tools = {}
    for (name, _), flags in named(TOOL).items():
        tools.setdefault(name, set()).update(flags)
    assert "param_count" in tools and "check_layers" in tools
    absent = sorted(name for name in tools if not (ROOT / "tools" / f"{name}.py").is_file())
    assert not absent, f"the docs name tools that are not in tools/: {absent}"
    for name, flags in sorted(tools.items()):  # each tool's --help, in this process
        text = help_text(tool(name).main, ["--help"])
        missing = sorted(f for f in flags if f not in text)
        assert text and not missing, f"tools/{name}.py: {missing}"


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)


def test_the_timm_pages_snippets_run_as_written(tmp_path, monkeypatch):
    """docs/timm.md's code, run as a user would: the second block beside the export its
    comment makes (a trained mlit_tiny's, with its own statistics)."""
    import torch

    pytest.importorskip("timm")
    import mlit
    from mlit import export as export_cli

    blocks = python_blocks(ROOT / "docs" / "timm.md")
    assert len(blocks) == 2
    model = mlit.create_model("mlit_tiny", num_classes=10)
    torch.save({"model": model.state_dict(), "kind": "finetune", "model_name": "mlit_tiny",
                "model_config": vars(model.cfg), "epoch": 1,
                "normalization": {"mean": [0.3] * 3, "std": [0.4] * 3}}, tmp_path / "run.pt")
    assert export_cli.main([str(tmp_path / "run.pt"), str(tmp_path / "model.safetensors")]) == 0
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], "docs/timm.md", "exec"), {})
    scope = {}
    exec(compile(blocks[1], "docs/timm.md", "exec"), scope)
    assert scope["config"]["mean"] == (0.3,) * 3 and scope["config"]["input_size"] == (3, 12, 12)
