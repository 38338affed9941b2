"""What the project's files hold, checked when they are read back (pydantic).

A file the project wrote may since have been edited, truncated or half-written; a reader
that trusts it fails deep inside with a TypeError or an IndexError. Each reader here checks
what it reads, and a file that does not fit is a DamagedFile (or, for a model file, a
CheckpointError) of one line that names the file, the line or field, and what is wrong.

- EpochRecord: a line of metrics.jsonl (mlit.train) or of a zoo model's result.json;
- ShapePoint: a line of a shape sweep's results (mlit.shape fit);
- ExportMetadata: the metadata of an exported .safetensors or .onnx file;
- DataStats: a folder dataset's data_stats.json (its classes and normalisation).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Literal, Optional

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from mlit.files.jsonl import DamagedFile, read_jsonl
from mlit.model.registry import CONFIGS, KINDS
from mlit.recipe.reading import format_validation_error

# a finite number, or null where an epoch did not measure it
Number = Optional[float]


def where(err: ValidationError) -> str:
    """The first problem pydantic found, as 'field: message (got value)'."""
    return format_validation_error(err, whole="")


class EpochRecord(BaseModel):
    """One epoch of a stage: its name, number, step and measured values (train_*, test_*)."""
    model_config = ConfigDict(extra="allow", strict=True)
    stage: str
    epoch: int = Field(ge=0)
    step: int = Field(0, ge=0)
    time_s: Number = None

    @model_validator(mode="after")
    def _measured_values_are_numbers(self):
        for key, value in (self.model_extra or {}).items():
            if key.startswith(("train_", "test_")) and not (
                    value is None or (isinstance(value, (int, float))
                                      and not isinstance(value, bool))):
                raise ValueError(f"{key}={value!r}: must be a number or null")
        return self


def read_epochs(path: str | Path) -> list[dict]:
    """metrics.jsonl or result.json, every line checked as an EpochRecord."""
    records = read_jsonl(path)
    for i, record in enumerate(records):
        try:
            EpochRecord.model_validate(record)
        except ValidationError as err:
            raise DamagedFile(f"{path}: record {i + 1}: {where(err)}") from None
    return records


class ShapePoint(BaseModel):
    """A shape-sweep result: the compute spent (FLOPs) and the test error reached."""
    compute: float = Field(gt=0, allow_inf_nan=False)
    error: float = Field(gt=0, allow_inf_nan=False)
    arms: Optional[list[str]] = None


def check_shape_points(records: list[dict], dim: str, path) -> None:
    """Every record that carries `dim` must have a positive finite x, compute and error."""
    for i, record in enumerate(records):
        if dim not in record:
            continue
        try:
            ShapePoint.model_validate(record)
        except ValidationError as err:
            raise DamagedFile(f"{path}: line {i + 1}: {where(err)}") from None
        x = record[dim]
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) \
                or x <= 0:
            raise DamagedFile(f"{path}: line {i + 1}: {dim}={x!r}: must be a positive number")


class Normalization(BaseModel):
    """The mean and std (per RGB channel) the model's inputs were normalised with, on pixels
    scaled to [0, 1]."""
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @model_validator(mode="after")
    def _in_range(self):
        if not all(0 <= m <= 1 for m in self.mean) or not all(0 < s <= 1 for s in self.std):
            raise ValueError(f"mean {list(self.mean)} and std {list(self.std)}: each must lie "
                             "in [0, 1], std above 0")
        return self


class ExportMetadata(BaseModel):
    """The metadata an export carries (python -m mlit.export): all strings in the file."""
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    format: Literal["mlit"]
    kind: Literal[KINDS]
    model_name: str
    config: dict = Field(alias="model_config")
    recipe: Optional[dict] = None
    class_names: Optional[list[str]] = None
    normalization: Optional[Normalization] = None
    weights_sha256: Optional[str] = None  # the weights' digest, checked when read
    quantized: Optional[Literal["int8"]] = None  # an ONNX file's quantisation
    image_size: Optional[int] = None  # an ONNX file's input side, as a string

    @field_validator("image_size", mode="before")
    @classmethod
    def _integer(cls, text):
        if text is None or isinstance(text, int):
            return text
        if not str(text).isdigit():
            raise ValueError(f"must be a positive integer (got {text!r})")
        return int(text)

    @field_validator("class_names", "normalization", mode="before")
    @classmethod
    def _json(cls, text):
        if text is None or not isinstance(text, str):
            return text
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"not JSON ({err})") from None

    @field_validator("config", "recipe", mode="before")
    @classmethod
    def _json_object(cls, text):
        if text is None or isinstance(text, dict):
            return text
        try:
            value = json.loads(text)
        except (TypeError, json.JSONDecodeError) as err:
            raise ValueError(f"not JSON ({err})") from None
        if not isinstance(value, dict):
            raise ValueError(f"must be a JSON object, not {type(value).__name__}")
        return value

    @field_validator("model_name")
    @classmethod
    def _known_model(cls, name: str) -> str:
        if name not in CONFIGS and name != "custom":
            raise ValueError(f"not a model mlit knows ({', '.join(CONFIGS)} or custom)")
        return name


Unit = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]


class DataStats(BaseModel):
    """data_stats.json, which mlit.train writes into a run folder on a folder dataset: the
    classes it trains (train/'s folder names, sorted) and the normalisation it uses."""
    model_config = ConfigDict(extra="ignore", strict=True)
    classes: list[str]
    mean: tuple[Unit, Unit, Unit]
    std: tuple[Unit, Unit, Unit]
    source: str = "an earlier start"
    train_images: int = Field(ge=0)

    @field_validator("std")
    @classmethod
    def _positive(cls, std):
        if min(std) <= 0:
            raise ValueError(f"must be positive (got {list(std)})")
        return std

    @field_validator("classes")
    @classmethod
    def _distinct_names(cls, classes):
        if len(set(classes)) != len(classes) or not all(classes):
            raise ValueError("must be distinct, non-empty folder names")
        return classes


def read_data_stats(path: Path) -> dict:
    """data_stats.json checked as DataStats, or DamagedFile saying how to recover."""
    try:
        return DataStats.model_validate_json(path.read_bytes()).model_dump()
    except OSError as err:
        raise DamagedFile(f"{path} cannot be read ({err.strerror})") from None
    except ValidationError as err:
        raise DamagedFile(f"{path}: {where(err)}; delete it to compute the statistics "
                          "again") from None
