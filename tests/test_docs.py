"""The repository explains itself: no reference to material outside it, and the files,
commands, subcommands and flags the documentation names exist."""

import re
import subprocess
from pathlib import Path

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


def test_the_files_the_docs_name_exist():
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    assert {p.name for p in docs} >= {"README.md", "architecture.md", "recipes.md", "zoo.md"}
    named = {m for p in docs for m in re.findall(
        r"`((?:mlit|kernels|tools|tests|recipes|docs)/[\w/.]+\.(?:py|yaml|md))`",
        p.read_text())}
    assert named and [n for n in sorted(named) if not (ROOT / n).exists()] == []


DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMAND = re.compile(r"python -m (mlit(?:\.\w+)?)((?: [^\s`|]+)*)")
TOOL = re.compile(r"python tools/(\w+)\.py((?: [^\s`|]+)*)")
FLAG = re.compile(r"(?<![\w-])(--[a-z][\w-]*)")


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
    import os
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # kernel_report
    tools = {}
    for (name, _), flags in named(TOOL).items():
        tools.setdefault(name, set()).update(flags)
    assert "param_count" in tools and "check_layers" in tools
    running = {name: subprocess.Popen([sys.executable, str(ROOT / "tools" / f"{name}.py"),
                                       "--help"], stdout=subprocess.PIPE, text=True, env=env)
               for name in tools if (ROOT / "tools" / f"{name}.py").is_file()}
    assert sorted(running) == sorted(tools), "the docs name a tool that is not in tools/"
    for name, proc in running.items():
        text = proc.communicate(timeout=120)[0]
        missing = sorted(f for f in tools[name] if f not in text)
        assert proc.returncode == 0 and not missing, f"tools/{name}.py: {missing}"
