"""The repository explains itself: no reference to material outside it, and the files the
documentation names exist."""

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
