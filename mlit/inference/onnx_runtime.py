"""ONNX Runtime on an exported file (python -m mlit.export ... model.onnx): its model
description read back from the metadata, a CPU session, and its predictions on a test loader
in the form mlit/inference/evaluation.py summarises for a checkpoint too.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from mlit.errors import BadInput
from mlit.files.checkpoint import CheckpointError
from mlit.files.modelfile import ModelFile, check_export_digest, from_export_metadata, model_path
from mlit.inference.summary import PredictionSummary


def deploy_modules():
    """(onnx, onnxruntime), or BadInput saying what to install."""
    try:
        import onnx
        import onnxruntime
    except ImportError as err:
        raise BadInput(f"ONNX export needs the deploy extra ({err.name} is missing): "
                       "pip install -e '.[deploy]'") from None
    return onnx, onnxruntime


def session(path, threads: int = 0):
    """A CPU session of the ONNX file at `path` (or of a ModelProto), on `threads` threads
    (0: ONNX Runtime's default)."""
    _, ort = deploy_modules()
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    source = path.SerializeToString() if hasattr(path, "SerializeToString") else str(path)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def evaluate_onnx(path: Path, loader, num_classes: int, experts: list[int]) -> dict:
    """A classifier file on a test loader with ONNX Runtime: cross-entropy and the
    PredictionSummary's figures, the experts counted from the file's `experts` output
    (B, layers, N, k); `experts`: the number of experts of each layer."""
    runner = session(path)
    summary = PredictionSummary(num_classes, experts)
    loss = 0.0
    for images, targets in loader:
        logits, chosen = (torch.from_numpy(a) for a in
                          runner.run(None, {"images": images.cpu().numpy()}))
        targets = targets.cpu()
        summary.add(targets, logits)
        for layer, count in enumerate(experts):
            per_image = F.one_hot(chosen[:, layer].reshape(len(targets), -1).long(), count)
            summary.add_routing(layer, per_image.sum(1), targets)
        loss += float(F.cross_entropy(logits.float(), targets, reduction="sum"))
    return {"loss": loss / summary.images, **summary.result()}


def initializer_bytes(model) -> list[tuple[str, bytes]]:
    from onnx import numpy_helper

    return [(t.name, numpy_helper.to_array(t).tobytes()) for t in model.graph.initializer]


def read_onnx(path: Path) -> ModelFile:
    """An ONNX export's model description from its metadata, read as every export's is
    (modelfile.from_export_metadata), then held against the graph itself: its weights'
    digest, its input and outputs. CheckpointError of one line for a damaged, foreign or
    mislabelled file."""
    onnx, _ = deploy_modules()
    model_path(path)  # a folder, nothing there
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf's DecodeError and others
        raise CheckpointError(f"{path} is not a readable ONNX file ({type(err).__name__})") \
            from None
    meta = {p.key: p.value for p in model.metadata_props}
    mf = from_export_metadata(path, meta, {}, "ONNX export")
    check_export_digest(path, meta.get("weights_sha256"), initializer_bytes(model))
    check_graph(path, model, mf)
    return mf


def dims(value) -> list:
    """A graph input's or output's shape: ints, or the name of a dynamic axis."""
    return [d.dim_value if d.HasField("dim_value") else d.dim_param
            for d in value.type.tensor_type.shape.dim]


def check_graph(path: Path, model, mf: ModelFile) -> None:
    """The graph takes and gives what an mLiT export of `mf.config` does: `images`
    (B, 3, S, S), then `logits` (B, classes) or `tokens` (B, N, d), and `experts`
    (B, MoE layers, N, k)."""
    cfg = mf.config
    tokens = cfg.num_patches + 1
    first = "tokens" if mf.kind == "encoder" else "logits"
    wanted = {"images": [None, cfg.in_channels, cfg.image_size, cfg.image_size],
              first: [None, cfg.num_classes] if first == "logits" else
              [None, tokens, cfg.embed_dim],
              "experts": [None, cfg.depth,
                          tokens, cfg.top_k]}
    found = {v.name: dims(v) for v in [*model.graph.input, *model.graph.output]}
    for name, shape in wanted.items():
        if name not in found:
            raise CheckpointError(f"{path}: the graph has no {name!r} "
                                  f"{'input' if name == 'images' else 'output'} (it has "
                                  f"{', '.join(found) or 'none'}): not an mLiT export")
        got = found[name]
        fixed = [g for g, w in zip(got, shape) if w is not None]
        if len(got) != len(shape) or fixed != [w for w in shape if w is not None]:
            raise CheckpointError(f"{path}: the graph's {name!r} is {got}, its metadata's "
                                  f"model_config makes it {['B', *shape[1:]]}; the metadata "
                                  "does not describe this graph")
