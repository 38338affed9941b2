"""What a model file holds, and the model it rebuilds: `mlit.load(path)`.

Two formats, one reader:
- `.pt`: a checkpoint the runner or the zoo wrote: {"model": state dict, "model_config": the
  MLiTConfig fields, "model_name", "kind", ...} (see mlit/files/checkpoint.py);
- `.safetensors`: an export (`python -m mlit.export`): the same weights, with the model config,
  name and kind as JSON strings in the file's metadata.

The kind says which module the weights belong to: `pretrain` (the MAE), `simclr`, `finetune`
or `supervised` (the classifier), `encoder` (an encoder-only export). Anything else, or weights
that do not fit the model the file describes, is a CheckpointError of one line.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import ValidationError
from torch import nn

from mlit.errors import first_line
from mlit.files import checkpoint as ckpt
from mlit.files import records
from mlit.files.atomic import write_bytes_atomic
from mlit.files.checkpoint import CheckpointError, tensor_bytes, weights_digest
from mlit.files.records import ExportMetadata
from mlit.files.weights import check_encoder, check_finite, describe, load_weights
from mlit.model.config import MLiTConfig
from mlit.model.registry import CLASSIFIER_KINDS, CONFIGS, KINDS, module_for

# the fields that tell model sizes apart, in the order a description names them
SHAPE_FIELDS = ("embed_dim", "depth", "hidden_first", "hidden_last", "expert_stages",
                "num_heads", "num_kv_groups", "image_size", "patch_size", "ffn", "shared")


def has_shape_of(cfg: MLiTConfig, name: str) -> bool:
    """Whether the config has the registry model `name`'s shape (any sharing arrangement)."""
    reference = MLiTConfig().replace(**CONFIGS[name])
    return all(getattr(cfg, f, None) == getattr(reference, f, None)
               for f in SHAPE_FIELDS if f != "shared")


def guess_name(cfg: MLiTConfig) -> str:
    """The registry name whose shape the config has, or 'custom'."""
    return next((name for name in CONFIGS if has_shape_of(cfg, name)), "custom")


def honest_name(name: str, cfg: MLiTConfig) -> str:
    """The name a file gives its model, held against the model_config it carries: a registry
    name whose shape the config does not have (an edited file, or a run that changed the
    named model's shape, as a shape sweep's do) gives way to the name the config's own shape
    has, so that an mlit_tiny is never reported as mlit_s."""
    return name if name == "custom" or has_shape_of(cfg, name) else guess_name(cfg)


@dataclass
class ModelFile:
    path: Path
    kind: str
    name: str
    config: MLiTConfig
    state: dict[str, torch.Tensor]
    recipe: dict | None = None  # the resolved recipe the weights were trained with, if known
    class_names: list[str] | None = None  # the training split's, for a folder dataset
    normalization: dict | None = None  # {"mean": [...], "std": [...]} of the inputs

    @property
    def description(self) -> str:
        return describe(self.name, self.config)

    def encoder_state(self) -> dict[str, torch.Tensor]:
        """The encoder's weights, without the 'encoder.' prefix."""
        if self.kind == "encoder":
            return self.state
        return {k[len("encoder."):]: v for k, v in self.state.items()
                if k.startswith("encoder.")}


def config_from_fields(fields: dict, path: Path) -> MLiTConfig:
    """The MLiTConfig a file describes; a field it does not have, or a value of the wrong
    type or range, is a CheckpointError naming the field."""
    known = {f.name for f in dataclasses.fields(MLiTConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise CheckpointError(f"{path}: model_config has fields mlit does not know "
                              f"({', '.join(map(str, unknown[:5]))}); was it edited?")
    try:
        return MLiTConfig(**fields)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: model_config {err}") from None


def check_name(name, path: Path) -> str:
    if name != "custom" and name not in CONFIGS:
        raise CheckpointError(f"{path}: model_name {name!r} is not a model mlit knows "
                              f"({', '.join(CONFIGS)} or custom)")
    return name


def zoo_config(path: Path) -> dict | None:
    """Epoch checkpoints of zoos written before they carried their config: config.json of
    the zoo model folder (checkpoint_0000XY/model.pt -> ../config.json)."""
    config = path.parent.parent / "config.json"
    if config.is_file():
        try:
            model = json.loads(config.read_text()).get("model")
        except (json.JSONDecodeError, AttributeError, OSError, UnicodeDecodeError):
            raise CheckpointError(f"{config}: not the JSON object of a zoo model") from None
        if isinstance(model, dict):
            return {k: v for k, v in model.items() if k != "name"}
    return None


def find_recipe(path: Path) -> Path | None:
    """The run's recipe.yaml: beside the file or in the two folders above it
    (run/stage/checkpoint.pt, zoo_model/checkpoint_0000XY/model.pt)."""
    for folder in list(path.resolve().parents)[:3]:
        if (folder / "recipe.yaml").is_file():
            return folder / "recipe.yaml"
    return None


def run_recipe(path: Path) -> dict | None:
    """The resolved recipe of the run a checkpoint belongs to, as a settings tree; None when
    there is none, RecipeError naming the recipe.yaml when it cannot be used."""
    from mlit.recipe.reading import RecipeError, parse_yaml

    found = find_recipe(path)
    if found is None:
        return None
    try:
        text = found.read_text()
    except (OSError, UnicodeDecodeError) as err:
        why = err.strerror if isinstance(err, OSError) else "not text"
        raise RecipeError(f"{found} cannot be read ({why})") from None
    tree = parse_yaml(text, str(found))  # RecipeError names the line
    if tree is None:
        raise RecipeError(f"{found} is empty: the run's recipe is gone; name the dataset "
                          "with data.dataset=... (and data.root=...)")
    if not isinstance(tree, dict):
        raise RecipeError(f"{found} is not a recipe (a YAML mapping of sections)")
    return tree


def infer_kind(state: dict) -> str:
    if any(k.startswith("decoder.") for k in state):
        return "pretrain"
    if any(k.startswith("projector.") for k in state):
        return "simclr"
    if any(k.startswith("head.1.") for k in state) and "head.0.running_mean" in state:
        return "linprobe"
    if any(k.startswith("head.") for k in state):
        return "finetune"
    return "encoder"


def read_checkpoint(path: Path) -> ModelFile:
    obj = ckpt.load(path)
    state, fields = obj.get("model"), obj.get("model_config") or zoo_config(path)
    if not isinstance(state, dict) or not isinstance(fields, dict) or not all(
            isinstance(t, torch.Tensor) for t in state.values()):
        raise CheckpointError(f"{path} is not an mLiT checkpoint (it has no 'model' weights "
                              "with a 'model_config')")
    config = config_from_fields(fields, path)
    kind = obj.get("kind") or infer_kind(state)
    name = honest_name(check_name(obj["model_name"], path), config) if obj.get("model_name") \
        else guess_name(config)
    return ModelFile(path, kind, name, config, state, run_recipe(path),
                     obj.get("class_names"), obj.get("normalization"))


def read_safetensors(path: Path) -> ModelFile:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file "
                              f"({first_line(err)})") from None
    meta.setdefault("kind", infer_kind(state))
    check_export_digest(path, meta.get("weights_sha256"), tensor_bytes(state))
    return from_export_metadata(path, meta, state, "export")


def check_export_digest(path: Path, expected: str | None, named_bytes) -> None:
    ckpt.check_digest(path, expected, named_bytes, "its weights do not match the "
                      "weights_sha256 in its metadata: the file is damaged; export it again")


def from_export_metadata(path: Path, meta: dict[str, str], state: dict, what: str
                         ) -> ModelFile:
    """The ModelFile an export's metadata describes (records.ExportMetadata), for the
    safetensors reader above and the ONNX one (mlit/inference/onnx_runtime.py); `what` names
    the format in the message for a foreign file."""
    if meta.get("format") != "mlit" or "model_config" not in meta:
        raise CheckpointError(f"{path} is not an mLiT {what} (its metadata has no mLiT "
                              "model config; was it written by python -m mlit.export?)")
    meta = {"model_name": "custom", **meta}
    try:
        checked = ExportMetadata.model_validate(meta)
    except ValidationError as err:
        raise CheckpointError(f"{path}: metadata {records.where(err)}") from None
    config = config_from_fields(checked.config, path)
    name = guess_name(config) if checked.model_name == "custom" else \
        honest_name(checked.model_name, config)
    if checked.class_names is not None and checked.kind in CLASSIFIER_KINDS and \
            len(checked.class_names) != config.num_classes:
        raise CheckpointError(f"{path}: metadata class_names has {len(checked.class_names)} "
                              f"names for a model of {config.num_classes} classes")
    if checked.image_size is not None and checked.image_size != config.image_size:
        raise CheckpointError(f"{path}: metadata image_size {checked.image_size} is not its "
                              f"model_config's {config.image_size}")
    return ModelFile(path, checked.kind, name, config, state, checked.recipe,
                     checked.class_names,
                     checked.normalization.model_dump() if checked.normalization else None)


def export_metadata(mf: ModelFile, kind: str) -> dict[str, str]:
    """What an exported file (.safetensors or .onnx) carries to rebuild and feed its model,
    as strings, read back by from_export_metadata (records.ExportMetadata)."""
    config = {k: list(v) if isinstance(v, tuple) else v for k, v in vars(mf.config).items()}
    meta = {"format": "mlit", "kind": kind, "model_name": mf.name,
            "model_config": json.dumps(config)}
    if mf.recipe is not None:
        meta["recipe"] = json.dumps(mf.recipe)
    if mf.class_names:
        meta["class_names"] = json.dumps(mf.class_names)
    if mf.normalization:
        meta["normalization"] = json.dumps(mf.normalization)
    return meta


def model_path(path: str | Path) -> Path:
    """The path of a model file that exists, or CheckpointError (a folder, nothing there);
    an ONNX file (by its name) is called one."""
    path = Path(path)
    onnx = path.name.endswith(".onnx")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not {'an ONNX' if onnx else 'a model'} file")
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist" if onnx else
                              f"checkpoint {path} does not exist")
    return path


def read(path: str | Path) -> ModelFile:
    """The model a .pt checkpoint or a .safetensors export holds, or CheckpointError."""
    path = model_path(path)
    if path.name.endswith(".onnx"):
        raise CheckpointError(f"{path} is an ONNX export, for ONNX Runtime (python -m "
                              f"mlit.eval {path} runs it); this reads .pt checkpoints and "
                              ".safetensors exports")
    mf = read_safetensors(path) if path.suffix == ".safetensors" else read_checkpoint(path)
    if mf.kind not in KINDS:
        raise CheckpointError(f"{path}: unknown model kind {mf.kind!r}")
    check_finite(mf.state, path)
    return mf


def encoder_for(path: str | Path, cfg: MLiTConfig, name: str, key: str) -> dict:
    """The encoder weights of the file at `path`, checked against the encoder the recipe
    builds (`cfg`, registry `name`); `key` names the recipe field for the message."""
    mf = read(path)
    return check_encoder(mf.encoder_state(), str(path), mf.description, cfg, name, key)


def write_safetensors(mf: ModelFile, out: Path, encoder_only: bool = False) -> Path:
    """The file's weights (or its encoder's alone) as a safetensors export at `out`, with
    export_metadata, written atomically."""
    from safetensors.torch import save

    state, kind = mf.state, mf.kind
    if encoder_only:
        state, kind = mf.encoder_state(), "encoder"
        if not state:
            raise CheckpointError(f"{mf.path}: holds no encoder weights")
    meta = {**export_metadata(mf, kind), "weights_sha256": weights_digest(tensor_bytes(state))}
    write_bytes_atomic(out, save({k: v.contiguous() for k, v in state.items()}, meta))
    return out


def load_model(path: str | Path) -> nn.Module:
    """Rebuild the model a .pt checkpoint or .safetensors export holds, from the file alone,
    in eval mode on the CPU: MLiT, MaskedAutoEncoder, SimCLR or (encoder-only) MLiTEncoder."""
    mf = read(path)
    module = module_for(mf.kind, mf.config)
    return load_weights(module, mf.state, str(mf.path)).eval()
