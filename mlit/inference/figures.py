"""The figures of an evaluation (python -m mlit.eval): the confusion matrix and each class's
share of tokens per expert of every MoE layer. matplotlib with the Agg backend, PNG files.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import torch


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no display), imported when a
    figure is drawn, so that a command's --help and its bad input answer without it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@contextlib.contextmanager
def quiet_glyphs():
    """Class names in scripts the default font lacks (CJK, emoji) draw as boxes; matplotlib's
    warning for every missing glyph is noise on the command's output."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*Glyph \d+ .*missing from")
        warnings.filterwarnings("ignore", message=r".*missing from (current )?font")
        yield


@quiet_glyphs()
def plot_confusion(path: Path, confusion: list[list[int]], classes: list[str],
                   title: str) -> None:
    plt = pyplot()

    m = torch.tensor(confusion, dtype=torch.float)
    m = m / m.sum(1, keepdim=True).clamp(min=1)
    n = len(m)
    fig, ax = plt.subplots(figsize=(min(6 + n * 0.12, 14),) * 2)
    image = ax.imshow(m.numpy(), cmap="Blues", vmin=0, vmax=1)
    if n <= 20:
        ax.set_xticks(range(n), classes, rotation=90, fontsize=7)
        ax.set_yticks(range(n), classes, fontsize=7)
    ax.set(xlabel="predicted class", ylabel="true class",
           title=f"{title}\nconfusion matrix, each row normalised to its images")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@quiet_glyphs()
def plot_experts(path: Path, per_class: list[list[list[float]]], classes: list[str],
                 title: str, decoder_layers: int = 0) -> None:
    """Each class's share of tokens per expert, the experts of every MoE layer side by side
    (numbered within their layer), the encoder's layers, then the decoder's (an MAE)."""
    plt = pyplot()

    blocks = [torch.tensor(layer) for layer in per_class]
    m = torch.cat(blocks, dim=1)  # (classes, experts of every layer)
    fig, ax = plt.subplots(figsize=(min(6 + m.shape[1] * 0.18, 20),
                                    min(3 + m.shape[0] * 0.12, 14)))
    image = ax.imshow(m.numpy(), cmap="viridis", aspect="auto", vmin=0)
    encoder_layers = len(blocks) - decoder_layers
    edges, middles, names = 0, [], []
    for i, block in enumerate(blocks):
        middles.append(edges + (block.shape[1] - 1) / 2)
        names.append(f"E{i}" if i < encoder_layers else f"D{i - encoder_layers}")
        edges += block.shape[1]
        ax.axvline(edges - 0.5, color="white", lw=0.8)
    experts = [e for block in blocks for e in range(block.shape[1])]
    ax.set_xticks(range(len(experts)), [str(e) for e in experts], fontsize=6)
    layers = ax.secondary_xaxis("top")  # the layer of each group of experts
    layers.set_xticks(middles, names, fontsize=7)
    if len(classes) <= 30:
        ax.set_yticks(range(len(classes)), classes, fontsize=7)
    where = "E: encoder layers, D: decoder layers" if decoder_layers else "E: encoder layers"
    ax.set(xlabel=f"expert, numbered within its MoE layer (top: {where})", ylabel="class",
           title=f"{title}\nshare of each class's tokens per expert")
    fig.colorbar(image, ax=ax, fraction=0.03)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def class_names(loader, num_classes: int) -> list[str]:
    dataset = getattr(loader, "dataset", None)
    names = getattr(dataset, "classes", None)
    return [str(c) for c in names] if names and len(names) == num_classes else \
        [str(i) for i in range(num_classes)]
