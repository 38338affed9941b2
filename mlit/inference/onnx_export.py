"""ONNX export for CPUs and edge runtimes (docs/deploy.md); running a file is onnx_runtime.py.

    python -m mlit.export runs/quickstart/finetune/checkpoint.pt model.onnx [--int8]

One self-contained file (opset 18, weights inside), a dynamic batch axis, input `images`
(B, 3, S, S) normalised as in training, outputs `logits` (B, classes) (an encoder-only file:
`tokens` (B, N, d)) and `experts` (B, layers, N, k): the k experts each token was routed to.
The file's metadata carries what `mlit.eval model.onnx` or any ONNX Runtime user needs: the
model config, image size, normalisation, class names and the recipe.

The graph is written node by node from the model's weights (onnx_graph.py): no
data-dependent shapes and no shape arithmetic at run time; each MoE layer computes every
expert for every token in one GEMM and weights them by the top-k gate, which gives the
numbers of the sparse path; routing noise is off, as at evaluation. Before the file is kept
it is checked: onnx.checker's full check, then ONNX Runtime against PyTorch's sparse path
on random and real test images at each of BATCHES (onnx_checks.py).
"""

from __future__ import annotations

import contextlib
import glob
import io
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from mlit.errors import BadInput, first_line
from mlit.files.checkpoint import weights_digest
from mlit.files.modelfile import ModelFile, export_metadata
from mlit.files.weights import load_weights
from mlit.inference.onnx_checks import (  # noqa: F401 (BATCHES: mlit.export's line)
    BATCHES,
    ExportFailed,
    check_export,
    check_int8,
    first_images,
)
from mlit.inference.onnx_chunks import chunked
from mlit.inference.onnx_graph import OPSET, lean_graph
from mlit.inference.onnx_runtime import deploy_modules, evaluate_onnx, initializer_bytes
from mlit.model.encoder import MLiT, MLiTEncoder
from mlit.model.moe import MoELayer
from mlit.model.registry import CLASSIFIER_KINDS

INT8_DROP = 0.01  # top-1 an int8 file may lose before a warning


@contextlib.contextmanager
def quiet():
    """The exporter's and the quantiser's progress lines off stdout (ours say what was done);
    their errors still raise."""
    logging.disable(logging.WARNING)  # the quantiser's notes on integer tensors it skips
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(logging.NOTSET)


class Deployable(nn.Module):
    """The classifier's logits (or the encoder's tokens) and, per token, the experts its
    router chose in every MoE layer, read off the gates by forward hooks."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.gates = model, []
        self.gate_inputs = []
        for layer in model.modules():
            if isinstance(layer, MoELayer):
                layer.gate.register_forward_hook(self.capture)

    def capture(self, gate, inputs, outputs):
        self.gates.append(outputs[0])
        self.gate_inputs.append((gate, inputs[0]))

    def forward(self, images: torch.Tensor):
        self.gates.clear()
        self.gate_inputs.clear()
        out, _ = self.model(images)
        k = self.model.cfg.top_k
        chosen = torch.stack([g.topk(k, dim=1).indices for g in self.gates])  # (L, B*N, k)
        return out, chosen.view(chosen.shape[0], images.shape[0], -1, k).transpose(0, 1)

    def routing_ties(self) -> torch.Tensor:
        """(B, L, N) True where the k-th and (k+1)-th router logits of a token (nearly) tie,
        so that float rounding may pick either expert: those tokens are not compared."""
        k = self.model.cfg.top_k
        ties = []
        for gate, x in self.gate_inputs:
            logits = x.float() @ gate.w_gate
            if logits.shape[1] <= k:
                ties.append(torch.zeros(len(x), dtype=torch.bool))
                continue
            top = logits.topk(k + 1, dim=1).values
            ties.append((top[:, k - 1] - top[:, k]).abs() < 1e-4)
        return torch.stack(ties)  # (L, B*N)


def module_to_export(mf: ModelFile, encoder_only: bool, impl: str) -> nn.Module:
    cfg = mf.config.replace(moe_impl=impl)
    if encoder_only:
        module = load_weights(MLiTEncoder(cfg), mf.encoder_state(), str(mf.path))
    elif mf.kind in CLASSIFIER_KINDS:
        module = load_weights(MLiT(cfg), mf.state, str(mf.path))
    else:
        raise BadInput(f"{mf.path} holds a {mf.kind} model: an ONNX export of it is the "
                       "encoder alone (add --encoder-only)")
    return module.eval()


def metadata(mf: ModelFile, kind: str) -> dict[str, str]:
    """An export's metadata (modelfile.export_metadata) and the input's side, for runtimes."""
    return {**export_metadata(mf, kind), "image_size": str(mf.config.image_size)}


def export_onnx(mf: ModelFile, out: Path, int8: bool = False, encoder_only: bool = False,
                test_loader=None) -> dict:
    """Write `out` (checked), or raise ExportFailed leaving no file; returns the checks and,
    with int8 and a test split, both files' test top-1."""
    onnx, _ = deploy_modules()
    kind = "encoder" if encoder_only else mf.kind
    size = mf.config.image_size
    remove_leftover_folders(out)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        write_graphs(module_to_export(mf, encoder_only, "torch"), tmp / "fp32.onnx",
                     tmp / "int8.onnx" if int8 else None)
        stamp(tmp / "fp32.onnx", metadata(mf, kind))
        onnx.checker.check_model(str(tmp / "fp32.onnx"), full_check=True)
        reference = Deployable(module_to_export(mf, encoder_only, "torch")).eval()
        test_images = first_images(test_loader, max(BATCHES))
        report = {"checker": "full check passed",
                  "parity": check_export(tmp / "fp32.onnx", reference, size, test_images)}
        final = tmp / "fp32.onnx"
        if int8:
            stamp(tmp / "int8.onnx", {**metadata(mf, kind), "quantized": "int8"})
            onnx.checker.check_model(str(tmp / "int8.onnx"), full_check=True)
            report["int8"] = check_int8(tmp / "int8.onnx", tmp / "fp32.onnx", size, test_images)
            final = tmp / "int8.onnx"
            if test_loader is not None and not encoder_only:
                cfg = mf.config
                report["top1"] = {name: evaluate_onnx(tmp / f"{name}.onnx", test_loader,
                                                      cfg.num_classes,
                                                      cfg.experts_per_layer())["top1"]
                                  for name in ("fp32", "int8")}
        os.replace(final, out)
        return report
    except (ExportFailed, BadInput):
        raise
    except Exception as err:  # the exporter or ONNX Runtime refused the graph
        raise ExportFailed(f"exporting {mf.path} to ONNX failed ({type(err).__name__}: "
                           f"{first_line(err, 200)}); no file was written") from None
    finally:
        for path in tmp.glob("*"):
            path.unlink()
        tmp.rmdir()


def stamp(path: Path, meta: dict[str, str]) -> None:
    """Write the metadata into the ONNX file at `path`, with its weights' digest."""
    onnx, _ = deploy_modules()
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {**meta,
                                        "weights_sha256": weights_digest(initializer_bytes(model))})
    onnx.save(model, str(path))


def remove_leftover_folders(out: Path) -> None:
    """The temporary folders of exports to `out` that a kill -9 left behind."""
    for folder in out.parent.glob(f".{glob.escape(out.name)}.*"):
        if folder.is_dir() and all(p.suffix == ".onnx" for p in folder.iterdir()):
            shutil.rmtree(folder, ignore_errors=True)


def write_graph(module: nn.Module, size: int, path: Path, outputs: list[str]) -> None:
    """Any module through torch.onnx's exporter (torch.export underneath), with a dynamic
    batch axis and the weights inside the file: what tools/bench_infer.py measures mLiT
    against (an mLiT's own graph is onnx_graph.py's)."""
    deploy_modules()
    try:
        import onnxscript  # noqa: F401 (torch.onnx's exporter needs it)
    except ImportError:
        raise BadInput("torch.onnx's exporter needs onnxscript: pip install -e '.[deploy]'") \
            from None
    example = torch.randn(2, 3, size, size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.no_grad(), warnings.catch_warnings(), quiet():
        warnings.simplefilter("ignore")  # the exporter's notes on the hooks' captures
        program = torch.onnx.export(module, (example,), dynamo=True, opset_version=OPSET,
                                    input_names=["images"], output_names=outputs,
                                    dynamic_shapes=({0: batch},), verbose=False)
    program.save(str(path), external_data=False)


def write_graphs(module: nn.Module, fp32: Path, int8: Path | None = None,
                 keep_plain: Path | None = None) -> None:
    """The graph of `module` (onnx_graph.py) run CHUNK images at a time (onnx_chunks.py) at
    `fp32` and, with `int8`, its quantised form there (quantised before chunking, so that the
    quantiser sees one graph, not two copies in subgraphs); the unchunked graph is kept at
    `keep_plain` when given (tools/bench_infer.py probes its products)."""
    onnx, _ = deploy_modules()
    plain = keep_plain or fp32.with_name(f"{fp32.stem}.plain.onnx")
    onnx.save(lean_graph(module), str(plain))
    try:
        onnx.save(chunked(onnx.load(str(plain))), str(fp32))
        if int8 is not None:
            quantized = int8.with_name(f"{int8.stem}.plain.onnx")
            quantize(plain, quantized)
            try:
                onnx.save(chunked(onnx.load(str(quantized))), str(int8))
            finally:
                quantized.unlink()
    finally:
        if keep_plain is None:
            plain.unlink()


def quantize(source: Path, target: Path) -> None:
    """ONNX Runtime's dynamic quantisation: int8 weights (one scale per tensor) of the
    products with a weight (the attention's products of activations stay fp32), their
    inputs quantised at run time, per chunk of images once chunked."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with quiet():
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)
