"""A stage's model: built from the recipe (a classifier's head from its own seed, a fine-tune's
encoder from its pre-training), and wrapped for DistributedDataParallel under torchrun."""

from __future__ import annotations

import torch

from mlit.data.catalogue import dataset_info
from mlit.data.seeds import seed_everything
from mlit.distributed import world
from mlit.model.registry import module_for
from mlit.model.stage_kinds import STAGE_KINDS
from mlit.recipe.schema import Recipe, Stage


def build_stage_model(recipe: Recipe, kind: str, stage: Stage, encoder_init: dict | None):
    """The stage's model. Classifier heads may draw from their own seed, so two runs that
    differ only in `head_seed` start from identical encoders and different heads."""
    extra = {"num_classes": dataset_info(recipe.data).num_classes}
    if stage.head:
        extra["head"] = stage.head
    cfg = recipe.model_settings(**extra)
    seed_everything(recipe.train.seed)
    model = module_for(kind, cfg)
    if not STAGE_KINDS[kind].classifier:
        return model
    if stage.head_seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(stage.head_seed)
            model.head = model.new_head(cfg)
    if encoder_init is not None:
        model.encoder.load_state_dict(encoder_init)
    return model


def data_parallel(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel under torchrun, the model itself alone. Every expert's weights
    are one stacked tensor, so a rank whose tokens skip an expert still gives that tensor a
    gradient (zero in the expert's slice); only the gate's noise weights go unused, when
    noisy gating is off, and DDP is told so (docs/distributed.md)."""
    if not world().distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                   else None,
                                   find_unused_parameters=not model.cfg.noisy_gating)
