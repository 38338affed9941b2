"""One summary of a classifier's predictions on a test split, whatever ran the model: top-1,
top-5, per-class accuracy, the confusion matrix and the share of tokens each expert of each
MoE layer receives, overall and per class. The PyTorch evaluation (mlit/inference/evaluation.py)
and the ONNX Runtime one (mlit/inference/onnx_runtime.py) both fill it batch by batch, so an
ONNX file and its checkpoint give their figures by the same arithmetic.
"""

from __future__ import annotations

import torch


class PredictionSummary:
    """Counts over batches; `result()` turns them into the figures mlit.eval reports."""

    def __init__(self, num_classes: int, experts_per_layer: list[int]):
        self.num_classes = num_classes
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
        self.top5 = 0
        self.images = 0
        # tokens routed to each expert of each layer, per class of the token's image
        self.routed = [torch.zeros(num_classes, e) for e in experts_per_layer]

    def add(self, targets: torch.Tensor, logits: torch.Tensor | None = None) -> None:
        """A batch of images: its targets (B,) and, for a classifier, its logits (B, classes)."""
        self.images += len(targets)
        if logits is None:
            return
        logits, targets = logits.detach().float().cpu(), targets.cpu()
        self.confusion.index_put_((targets, logits.argmax(1)),
                                  torch.ones(len(targets), dtype=torch.long), accumulate=True)
        k = min(5, self.num_classes)
        self.top5 += int((logits.topk(k, dim=1).indices == targets[:, None]).any(1).sum())

    def add_routing(self, layer: int, per_image: torch.Tensor, targets: torch.Tensor) -> None:
        """per_image (B, experts): how many of each image's tokens layer `layer` routed to
        each of its experts."""
        self.routed[layer].index_add_(0, targets.cpu(), per_image.float().cpu())

    def result(self, classifier: bool = True) -> dict:
        """images, top1/top5 (fractions; None for a model that does not classify),
        per_class_acc (None for a class without test images), confusion (rows: true class),
        expert_share (per layer) and expert_share_per_class (per layer, a row per class)."""
        out: dict = {"images": self.images, "top1": None, "top5": None}
        if classifier and self.images:
            per_class = self.confusion.diag().double() / self.confusion.sum(1)
            out.update(top1=int(self.confusion.diag().sum()) / self.images,
                       top5=self.top5 / self.images,
                       per_class_acc=[None if x != x else float(x) for x in per_class],
                       confusion=self.confusion.tolist())
        out["expert_share"] = [(c.sum(0) / c.sum().clamp(min=1)).tolist() for c in self.routed]
        out["expert_share_per_class"] = [(c / c.sum(1, keepdim=True).clamp(min=1)).tolist()
                                         for c in self.routed]
        return out
