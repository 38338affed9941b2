"""Stage kinds: what each kind of recipe stage trains and how the rest of the project treats
it, one row each. The recipe's schema, the runner, the FLOP count, the files and the figures
look a kind up here instead of listing kinds of their own (tests/test_flops.py runs every row).

A recipe runs its stages in the table's order: pre-training (the MAE or SimCLR), then a
linear probe or fine-tuning of the pre-trained encoder, or supervised training from scratch.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from mlit.model.encoder import MLiT
from mlit.model.mae import MaskedAutoEncoder
from mlit.model.probe import LinearProbe
from mlit.model.simclr import SimCLR


@dataclass(frozen=True)
class StageKind:
    name: str
    module: type[nn.Module]  # what the stage trains (and a checkpoint of it holds)
    pretrains: bool = False  # trains an encoder for a later stage; the k-NN monitor applies
    classifier: bool = False  # trains a head on the labels: its files name the classes
    from_pretraining: bool = False  # starts from a pre-trained encoder (a stage or `init`)
    frozen_encoder: bool = False  # measures an encoder as it is (so init=random is allowed)
    views: int = 1  # augmented views of each image in a batch (SimCLR: a pair)


STAGE_KINDS = {kind.name: kind for kind in (
    StageKind("pretrain", MaskedAutoEncoder, pretrains=True),
    StageKind("simclr", SimCLR, pretrains=True, views=2),
    StageKind("linprobe", LinearProbe, classifier=True, from_pretraining=True,
              frozen_encoder=True),
    StageKind("finetune", MLiT, classifier=True, from_pretraining=True),
    StageKind("supervised", MLiT, classifier=True),
)}
STAGE_ORDER = tuple(STAGE_KINDS)  # the order in which a recipe runs its stages
PRETRAINING = tuple(k for k, s in STAGE_KINDS.items() if s.pretrains)
CLASSIFIERS = tuple(k for k, s in STAGE_KINDS.items() if s.classifier)
FROM_PRETRAINING = tuple(k for k, s in STAGE_KINDS.items() if s.from_pretraining)
