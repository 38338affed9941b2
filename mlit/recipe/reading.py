"""Reading settings files: YAML that refuses duplicate keys, dotted command-line overrides,
`base:` inheritance between recipes, and validation into a pydantic schema whose first error
becomes one line naming the key (RecipeError, exit 2).

    tree = read_tree("recipes/mmlit_s.yaml", ["finetune.epochs=10"], "recipe", "...")
    recipe = validate(Recipe, tree)

The recipes of mlit.train (mlit/recipe/schema.py), of the zoo and of the shape sweep are all
read here; so is a run folder's recipe.yaml when a checkpoint is read back.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from mlit.errors import BadInput


class RecipeError(BadInput):
    """A recipe or override that cannot run; the message names the key."""


class Strict(BaseModel):
    # unknown keys are errors; .inf and .nan are rejected wherever a number is expected
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class StrictYAMLLoader(yaml.SafeLoader):
    """yaml.safe_load that refuses a key given twice in one mapping (a second `pretrain:`
    block, a repeated `epochs:`), as strict YAML loaders do, instead of keeping the last."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} at line {line} (first at line "
                    f"{seen[key]})", key_node.start_mark)
            seen[key] = line
        return super().construct_mapping(node, deep)


def parse_yaml(text: str, where: str):
    """YAML text as Python objects, or RecipeError with the line and column of the problem."""
    try:
        return yaml.load(text, Loader=StrictYAMLLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        if problem.startswith("duplicate key"):
            raise RecipeError(f"{where}: {problem}") from None
        raise RecipeError(f"{where}: not valid YAML{at} ({problem})") from None


def parse_override(text: str) -> tuple[list[str], object]:
    if "=" not in text:
        raise RecipeError(f"override {text!r}: expected key=value, e.g. finetune.epochs=10")
    key, value = text.split("=", 1)
    path = key.strip().split(".")
    if not all(path):
        raise RecipeError(f"override {text!r}: no key before '=' (or an empty part in it), "
                          "expected key=value, e.g. finetune.epochs=10")
    return path, parse_yaml(value, f"override {text!r}") if value.strip() else None


def apply_override(tree: dict, path: list[str], value) -> None:
    node = tree
    for i, part in enumerate(path[:-1]):
        child = node.get(part)
        if child is None:  # a section the YAML left out; validation names unknown ones
            child = node[part] = {}
        if not isinstance(child, dict):
            raise RecipeError(f"{'.'.join(path[:i + 1])}: not a section, cannot set "
                              f"{'.'.join(path)}")
        node = child
    node[path[-1]] = value


def format_validation_error(err: ValidationError, whole: str = "recipe") -> str:
    """pydantic's first error as 'field: message'; `whole` names a check of the whole tree
    (none: the message alone, which names its field)."""
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or whole
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif "input" in first and first["type"] not in ("missing", "value_error"):
        msg += f" (got {first['input']!r})"
    if first["type"] == "value_error":
        msg = msg.removeprefix("Value error, ")
    return f"{where}: {msg}" if where else msg


def validate(schema: type[BaseModel], tree: dict, section: str = ""):
    """The settings tree as `schema`, or RecipeError naming the first bad key; `section` is
    where a section's tree sits in a recipe (`data`), so that the key is named in full."""
    try:
        return schema.model_validate(tree)
    except ValidationError as err:
        if not section:
            raise RecipeError(format_validation_error(err)) from None
        line = format_validation_error(err, whole="")  # a whole-section check names its keys
        prefix = f"{section}." if err.errors()[0]["loc"] else ""
        raise RecipeError(prefix + line) from None


def read_file_tree(path: Path, what: str, shipped: str, seen: tuple = ()) -> dict:
    """One recipe file as a settings tree. `base: other.yaml` (relative to the file) starts
    from that recipe's tree and merges this file's sections into it, key by key."""
    if path.is_dir():
        raise RecipeError(f"{what} {path} is a folder, not a recipe file ({shipped})")
    if not path.is_file():
        kind = "is not a regular file" if path.exists() else "not found"
        raise RecipeError(f"{what} {path} {kind} ({shipped})")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or "\x00" in text:
        raise RecipeError(f"{path}: not a YAML text file (binary content)")
    tree = parse_yaml(text, str(path)) or {}
    if not isinstance(tree, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of sections")
    base = tree.pop("base", None)
    if base is None:
        return tree
    if not isinstance(base, str):
        raise RecipeError(f"{path}: base: expected the file name of another recipe")
    base_path = (path.parent / base).resolve()
    if base_path in seen:
        raise RecipeError(f"{path}: base: {base} leads back to itself")
    return merge(read_file_tree(base_path, what, shipped, (*seen, path.resolve())), tree)


def merge(base: dict, changes: dict) -> dict:
    """base with changes applied; sections merge recursively, other values replace."""
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_tree(path: str | Path, overrides: list[str], what: str, shipped: str) -> dict:
    """A recipe file (`what`: recipe or zoo recipe) as a settings tree, its name defaulting
    to the file's stem, with the overrides applied."""
    path = Path(path)
    tree = read_file_tree(path, what, shipped)
    tree.setdefault("name", path.stem)
    for text in overrides:
        apply_override(tree, *parse_override(text))
    return tree
