"""The checks an ONNX export passes before it is kept (onnx_export.py, docs/deploy.md): ONNX
Runtime against PyTorch's sparse path (`check_export`), and an int8 file against the fp32 file
it was quantised from (`check_int8`), each at every one of BATCHES on random images and on
real test images when there are some. A failed check raises ExportFailed and no file is kept.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from mlit.errors import Fault
from mlit.inference.onnx_runtime import session

BATCHES = (1, 7, 64)
LOGIT_TOLERANCE = 1e-4


class ExportFailed(Fault):
    """A check of the exported file failed; nothing was written."""


def check_images(size: int, test_images: torch.Tensor | None, seed: int
                 ) -> dict[str, torch.Tensor]:
    """What the checks run on: random images (a fixed seed) and real test images when there
    are some, as many as the largest of BATCHES."""
    generator = torch.Generator().manual_seed(seed)
    sources = {"random": torch.randn(max(BATCHES), 3, size, size, generator=generator)}
    if test_images is not None and len(test_images):
        sources["test"] = test_images[:max(BATCHES)]
    return sources


def check_export(path: Path, reference: nn.Module, size: int,
                 test_images: torch.Tensor | None) -> list[dict]:
    """ONNX Runtime against PyTorch's sparse path at each of BATCHES, on random images and
    on real test images when there are some: logits within LOGIT_TOLERANCE, the same
    predicted class, the same experts per token where the router has no tie."""
    runner = session(path)
    rows = []
    for source, images in check_images(size, test_images, seed=0).items():
        for b in BATCHES:
            x = images[:b]
            if len(x) < b:
                continue
            with torch.no_grad():
                ref_out, ref_experts = reference(x)
                ties = reference.routing_ties().view(ref_experts.shape[1], b, -1)
            got_out, got_experts = runner.run(None, {"images": x.numpy()})
            diff = float(np.abs(got_out - ref_out.numpy()).max())
            same_class = ref_out.dim() != 2 or bool(
                (got_out.argmax(1) == ref_out.numpy().argmax(1)).all())  # tokens: no class
            chosen = np.sort(got_experts, axis=-1) == np.sort(ref_experts.numpy(), axis=-1)
            untied = ~ties.transpose(0, 1).numpy()[..., None]
            experts_ok = bool((chosen | ~untied).all())
            rows.append({"images": source, "batch": b, "max_abs_diff": diff,
                         "same_class": same_class, "same_experts": experts_ok,
                         "untied_tokens": int(untied.sum())})
            if diff > LOGIT_TOLERANCE or not same_class or not experts_ok:
                raise ExportFailed(
                    f"the ONNX graph disagrees with PyTorch on {source} images at batch {b} "
                    f"(largest difference {diff:.2e}, allowed {LOGIT_TOLERANCE:.0e}; same "
                    f"class: {same_class}; same experts: {experts_ok}); no file was written")
    return rows


def check_int8(int8: Path, fp32: Path, size: int, test_images: torch.Tensor | None
               ) -> list[dict]:
    """The int8 file itself, against the fp32 file it was quantised from, at each of BATCHES
    on random images and on real test images when there are some: it runs, its outputs have
    the fp32 file's shapes; its largest output difference and, for a classifier, the share
    of images whose top-1 class is the fp32 file's (int8 rounds, so these are figures to
    read, not tolerances)."""
    quantised, reference = session(int8), session(fp32)
    rows = []
    for source, images in check_images(size, test_images, seed=1).items():
        for b in BATCHES:
            x = images[:b].numpy()
            if len(x) < b:
                continue
            got, want = quantised.run(None, {"images": x})[0], reference.run(None, {"images": x})[0]
            if got.shape != want.shape or not np.isfinite(got).all():
                raise ExportFailed(f"the int8 graph gives {got.shape} outputs (finite: "
                                   f"{bool(np.isfinite(got).all())}) where the fp32 graph gives "
                                   f"{want.shape}, on {source} images at batch {b}; no file "
                                   "was written")
            row = {"images": source, "batch": b, "max_abs_diff": float(np.abs(got - want).max())}
            if got.ndim == 2:  # logits: a classifier
                row["same_top1"] = float((got.argmax(1) == want.argmax(1)).mean())
            rows.append(row)
    return rows


def first_images(loader, n: int) -> torch.Tensor | None:
    """Up to n images of a loader's first batches, on the CPU."""
    if loader is None:
        return None
    found = []
    for images, _ in loader:
        found.append(images.cpu())
        if sum(len(x) for x in found) >= n:
            break
    return torch.cat(found)[:n] if found else None
