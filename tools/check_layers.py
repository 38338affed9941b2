"""Check the import layers of mlit (the contracts in pyproject.toml, docs/architecture.md).

    python tools/check_layers.py               # this checkout
    python tools/check_layers.py --tree DIR    # another checkout (the tests plant a back-edge)

import-linter reads a package where it is installed, and `kernels/` installs as `mlit.kernels`
(pyproject.toml's package-dir), which is no sub-folder of `mlit/` in the checkout. So the
package is first laid out as it installs, kernels inside, in a temporary folder, and
lint-imports runs on that copy with the checkout's own contracts. Then the scripts of tools/,
which import each other by name, are checked for import circles and for any import of them
from mlit or kernels (tools import the package, never the reverse). Exit 0 when every
contract is kept, 1 with import-linter's report (or the circle) when one is broken.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def staged_package(tree: Path, into: Path) -> Path:
    """`mlit/` with `kernels/` as `mlit/kernels/`, as pip installs them."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(tree / "mlit", into / "mlit", ignore=ignore)
    shutil.copytree(tree / "kernels", into / "mlit" / "kernels", ignore=ignore)
    shutil.copy(tree / "pyproject.toml", into / "pyproject.toml")
    return into


def lint_imports(staged: Path) -> int:
    env = {**os.environ, "PYTHONPATH": str(staged)}
    code = ("import sys\nfrom importlinter.cli import lint_imports\n"
            "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True))")
    return subprocess.run([sys.executable, "-c", code], cwd=staged, env=env).returncode


def imported_names(path: Path) -> set[str]:
    """Top-level names of every module a file imports (in functions too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def tool_problems(tree: Path) -> list[str]:
    """Circles among tools/ scripts; any mlit or kernels module that imports one of them."""
    tools = {p.stem: p for p in sorted((tree / "tools").glob("*.py"))}
    graph = {name: imported_names(path) & set(tools) - {name} for name, path in tools.items()}
    problems = [f"tools/{a}.py and tools/{b}.py import each other"
                for a in graph for b in graph[a] if a < b and a in graph[b]]
    for a in graph:  # longer circles: a reaches itself
        seen, todo = set(), list(graph[a])
        while todo:
            b = todo.pop()
            if b == a:
                problems.append(f"tools/{a}.py imports itself through a circle of tools")
                break
            if b not in seen:
                seen.add(b)
                todo += graph[b]
    for folder in ("mlit", "kernels"):
        for path in sorted((tree / folder).rglob("*.py")):
            back = imported_names(path) & (set(tools) | {"tools"})
            if back:
                problems.append(f"{path.relative_to(tree)} imports tools ({', '.join(back)})")
    return sorted(set(problems))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, default=ROOT, help="the checkout to check")
    args = parser.parse_args(argv)
    if importlib.util.find_spec("importlinter") is None:
        print("check_layers: import-linter is not installed: pip install -e '.[dev]'",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="mlit-layers-") as tmp:
        status = lint_imports(staged_package(args.tree, Path(tmp)))
    problems = tool_problems(args.tree)
    for line in problems:
        print(f"check_layers: {line}", file=sys.stderr)
    return 1 if status or problems else 0


if __name__ == "__main__":
    sys.exit(main())
