"""FLOPs counted by torch.utils.flop_counter against a hand count of the GEMMs and against
each module's closed form, and the parameters a token uses."""

import pytest

import mlit
from mlit.model.flops import (
    active_params,
    counted_forward_flops,
    counted_training_flops,
    forward_flops,
    training_flops,
)
from mlit.model.stage_kinds import STAGE_KINDS


def hand_count(cfg, num_classes=100) -> int:
    """Forward FLOPs per image (2 per multiply-add) of every matrix product of the classifier:
    patch embedding, q/k/v/o, the two attention products, the clean gate, the shared V and
    W2, the k routed experts' W, the head."""
    n, d = cfg.num_patches + 1, cfg.embed_dim
    head_dim = d // cfg.num_heads
    kv = cfg.num_kv_groups * head_dim
    flops = 2 * n * cfg.patch_dim * d
    for h, experts in zip(cfg.hidden_sizes(), cfg.experts_per_layer()):
        flops += 2 * n * (2 * d * d + 2 * d * kv)  # q, o; k, v
        flops += 2 * 2 * cfg.num_heads * n * n * head_dim  # q k^T, then the values
        flops += 2 * n * d * experts  # clean gate logits
        flops += 2 * n * d * h * (1 + cfg.top_k) + 2 * n * h * d  # V, k experts' W, W2
    return flops + 2 * d * num_classes


@pytest.mark.parametrize("name", ["mlit_s", "mlit_xxs"])
def test_counted_forward_flops_match_a_hand_count(name):
    cfg = mlit.model_config(name)
    counted, expected = counted_forward_flops(cfg), hand_count(cfg)
    assert abs(counted - expected) / expected < 0.05, (counted, expected)


def test_training_counts_the_backward_and_the_noise_gate():
    cfg = mlit.model_config("mlit_micro", num_classes=10)
    forward = counted_forward_flops(cfg)
    train = counted_training_flops(cfg, "supervised")
    assert 2.9 < train / forward < 3.3  # backward ~ 2x forward, plus x Wn in training
    mae = counted_training_flops(cfg, "pretrain")
    assert mae < train  # the encoder sees a quarter of the patches


def test_active_parameters_leave_out_the_unrouted_experts():
    cfg = mlit.model_config("mlit_s")
    total = sum(p.numel() for p in mlit.create_model("mlit_s").parameters())
    d = cfg.embed_dim
    unrouted = sum((e - cfg.top_k) * (d * h + h)
                   for h, e in zip(cfg.hidden_sizes(), cfg.experts_per_layer()))
    assert active_params(cfg) == total - unrouted == 1_948_590


@pytest.mark.parametrize("kind", ["supervised", "pretrain", "simclr", "linprobe"])
@pytest.mark.parametrize("shared", ["v_w2", "w_v"])
def test_the_meta_device_count_is_the_count_of_a_real_sparse_step(kind, shared):
    """The count on the meta device (no arithmetic, no routing) is a real step's on the CPU,
    whose sparse dispatch routes real tokens."""
    import torch

    from mlit.model import flops

    cfg = mlit.model_config("mlit_micro", num_classes=10, shared=shared, top_k=2)
    torch.manual_seed(0)
    model = flops.module_for(kind, cfg.replace(moe_impl="torch")).train()
    images = torch.randn(2 * STAGE_KINDS[kind].views, 3, 12, 12)
    real = flops.count(lambda: flops.scalar_output(model(images)).backward()) / 2
    assert counted_training_flops(cfg, kind) == real


@pytest.mark.parametrize("kind", list(STAGE_KINDS))
def test_the_closed_form_is_the_counters_figure(kind):
    """Each module's matmul_flops (mlit/model/closed_form.py) against FlopCounterMode,
    training and evaluation, for each sharing arrangement, both heads, the dense MLP, gates
    without noise and k = 1, another mask ratio and decoder depth."""
    variants = [{"shared": "v_w2"}, {"shared": "w_w2"}, {"shared": "w_v"}, {"head": "mlp"},
                {"ffn": "mlp"}, {"noisy_gating": False, "top_k": 1},
                {"mask_ratio": 0.5, "decoder_depth": 2}]
    for variant in variants:
        cfg = mlit.model_config("mlit_micro", num_classes=10, **variant)
        for worked_out, counted in ((training_flops, counted_training_flops),
                                    (forward_flops, counted_forward_flops)):
            got, want = worked_out(cfg, kind), counted(cfg, kind)
            assert got == want, (variant, counted.__name__, got, want)


@pytest.mark.parametrize("kind", list(STAGE_KINDS))
def test_every_stage_kind_builds_its_module_and_counts_its_training(kind):
    """A row of mlit/model/stage_kinds.py: the module the registry builds for it, a recipe
    with that stage (after a pre-training where it starts from one), its FLOPs per image."""
    from mlit.model.registry import module_for
    from mlit.recipe.schema import build_recipe

    row, cfg = STAGE_KINDS[kind], mlit.model_config("mlit_micro", num_classes=10)
    assert type(module_for(kind, cfg)) is row.module
    stage = {"epochs": 1, "batch_size": 8, "base_lr": 1e-3}
    stages = {"pretrain": stage, kind: stage} if row.from_pretraining else {kind: stage}
    recipe = build_recipe({"name": "row", "model": {"name": "mlit_micro"},
                           "data": {"dataset": "digits"}, **stages})
    assert [k for k, _ in recipe.stages()][-1] == kind
    assert (recipe.pretraining_stage() is not None) == (row.pretrains or row.from_pretraining)
    assert training_flops(cfg, kind) == counted_training_flops(cfg, kind) > 0
    # the runner's questions (mlit/training/engine.py), answered from the forward's output
    import torch

    torch.manual_seed(0)
    model = module_for(kind, cfg).train()
    images, targets = torch.randn(4 * row.views, 3, 12, 12), torch.arange(4)
    parts = model.loss_parts(model(images), targets, 0.1)
    assert parts["loss"].dim() == 0 and torch.isfinite(parts["loss"]) and len(parts) > 1
    model.eval()
    with torch.no_grad():
        out = model.eval_forward(images, torch.Generator().manual_seed(0))
    assert set(model.eval_parts(out, targets)) == set(model.EVAL_KEYS)
    assert hasattr(model, "predictions") == row.classifier
    if row.classifier:
        assert model.predictions(out).shape == (4,)

