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
from mlit.files.modelfile import ModelFile, from_export_metadata
from mlit.inference.summary import PredictionSummary


def deploy_modules():
    """(onnx, onnxruntime), or BadInput saying what to install."""
    try:
        import onnx
        import onnxruntime
        import onnxscript  # noqa: F401 (torch.onnx's exporter needs it)
    except ImportError as err:
        raise BadInput(f"ONNX export needs the deploy extra ({err.name} is missing): "
                       "pip install -e '.[deploy]'") from None
    return onnx, onnxruntime


def session(path: Path, threads: int = 0):
    _, ort = deploy_modules()
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


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


def read_onnx(path: Path) -> ModelFile:
    """An ONNX export's model description from its metadata, read as every export's is
    (modelfile.from_export_metadata); CheckpointError of one line for a damaged or foreign
    file."""
    onnx, _ = deploy_modules()
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf's DecodeError and others
        raise CheckpointError(f"{path} is not a readable ONNX file ({type(err).__name__})") \
            from None
    meta = {p.key: p.value for p in model.metadata_props}
    return from_export_metadata(path, meta, {}, "ONNX export")
