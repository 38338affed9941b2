"""The repository explains itself: no reference to material outside it, and the files the
documentation names exist."""

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]
TEXT = [p for p in ROOT.rglob("*") if p.suffix in (".py", ".md", ".yaml", ".toml")
        and ".git" not in p.parts and "build" not in p.parts]


def test_nothing_points_outside_the_repository():
    pattern = re.compile(r"shared/|SPEC [0-9]|SPEC\.md")
    offenders = [f"{p.relative_to(ROOT)}:{i + 1}" for p in TEXT
                 for i, line in enumerate(p.read_text(errors="replace").splitlines())
                 if pattern.search(line) and p.name != "test_docs.py"]
    assert offenders == []


def test_the_files_the_docs_name_exist():
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    assert {p.name for p in docs} >= {"README.md", "architecture.md", "recipes.md", "zoo.md"}
    named = {m for p in docs for m in re.findall(
        r"`((?:mlit|kernels|tools|tests|recipes|docs)/[\w/.]+\.(?:py|yaml|md))`",
        p.read_text())}
    assert named and [n for n in sorted(named) if not (ROOT / n).exists()] == []
