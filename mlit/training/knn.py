"""A k-NN monitor of a pre-training encoder (docs/training.md, "Monitoring pre-training"): the
top-1 accuracy of a weighted k-nearest-neighbour vote of the frozen encoder's features, test
images against training images, as DINO's evaluation computes it. A run that is going
nowhere shows it in the first epochs, without a fine-tune.

Features are what the fine-tune head reads: the encoder's output at the dummy patch, after the
final norm, L2-normalised; the vote of the k most similar training images (cosine
similarity) is weighted by exp(similarity / temperature). Under torchrun each rank embeds
its shard of both splits and the features are gathered, so the figure is one process's.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

from mlit.data.catalogue import dataset_info
from mlit.data.loaders import eval_loader
from mlit.distributed import world
from mlit.recipe.schema import Data, Stage
from mlit.training.engine import Precision, eval_mode, to_device


@torch.no_grad()
def encoder_features(encoder: torch.nn.Module, loader,
                     precision: Precision) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, d) L2-normalised, labels (N,)) of a loader's images, on the device, in
    evaluation mode; every rank's when the run has several."""
    features, labels = [], []
    with eval_mode(encoder):
        for images, targets in loader:
            images = to_device(images, precision.device)
            with precision.autocast():
                tokens, _ = encoder(images)
            features.append(F.normalize(tokens[:, -1].float(), dim=1))
            labels.append(targets.to(precision.device))
    return gather(torch.cat(features)), gather(torch.cat(labels))


def gather(values: torch.Tensor) -> torch.Tensor:
    """Every rank's rows, in rank order (ranks may hold different numbers of rows)."""
    if not world().distributed:
        return values
    sizes = [None] * world().size
    dist.all_gather_object(sizes, len(values))
    padded = values.new_zeros((max(sizes), *values.shape[1:]))
    padded[:len(values)] = values
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, sizes)])


def knn_vote(train_features: torch.Tensor, train_labels: torch.Tensor,
             test_features: torch.Tensor, num_classes: int, k: int = 20,
             temperature: float = 0.07, chunk: int = 256) -> torch.Tensor:
    """The predicted class of every test feature: the k most similar training features vote,
    each with weight exp(cosine similarity / temperature). Features are L2-normalised."""
    k = min(k, len(train_features))
    predictions = []
    for part in test_features.split(chunk):  # a bounded (chunk, N) similarity matrix
        similarity, index = (part @ train_features.T).topk(k, dim=1)
        votes = torch.zeros(len(part), num_classes, device=part.device)
        votes.scatter_add_(1, train_labels[index], (similarity / temperature).exp())
        predictions.append(votes.argmax(1))
    return torch.cat(predictions)


def knn_accuracy(encoder: torch.nn.Module, train_loader, test_loader, precision: Precision,
                 num_classes: int, k: int = 20, temperature: float = 0.07) -> float:
    """Top-1 (a fraction) of the weighted k-NN vote, test split against training split."""
    train_features, train_labels = encoder_features(encoder, train_loader, precision)
    test_features, test_labels = encoder_features(encoder, test_loader, precision)
    predicted = knn_vote(train_features, train_labels, test_features, num_classes, k,
                         temperature)
    return float((predicted == test_labels).float().mean())


class KnnMonitor:
    """What a pre-training stage runs every `knn_every` epochs and at its last: the encoder's
    k-NN top-1 (`test_knn_acc`) and the seconds it took (`knn_s`), for metrics.jsonl, the
    epoch line and TensorBoard. Both splits without augmentation."""

    def __init__(self, kind: str, data: Data, stage: Stage, model, precision: Precision):
        self.kind, self.model, self.precision = kind, model, precision
        self.num_classes = dataset_info(data).num_classes
        size, batch = model.cfg.image_size, max(stage.batch_size, 256)
        self.train_loader = eval_loader(data, size, batch, precision.device, train=True)
        self.test_loader = eval_loader(data, size, batch, precision.device)

    def measure(self, writer, step: int) -> dict:
        start = time.time()
        acc = knn_accuracy(self.model.encoder, self.train_loader, self.test_loader,
                           self.precision, self.num_classes)
        writer.add_scalar(f"{self.kind}/test_knn_acc", acc, step)
        return {"test_knn_acc": acc, "knn_s": round(time.time() - start, 2)}
