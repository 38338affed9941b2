"""The optimiser (mlit/training/optim.py): layer-wise lr decay groups, the linear scaling rule,
warm-up then cosine per step."""

import pytest

import mlit
from mlit.recipe.schema import Stage
from mlit.training.optim import build_optimizer, lr_at, param_groups


def test_layer_wise_lr_decay_groups():
    model = mlit.create_model("mlit_micro", num_classes=10)  # depth 3: ids 0..4
    groups = param_groups(model, weight_decay=0.05, layer_decay=0.5)
    scale = {n: g["lr_scale"] for g in groups for n in g["names"]}
    wd = {n: g["weight_decay"] for g in groups for n in g["names"]}
    assert scale["encoder.patch_embed.proj.weight"] == 0.5**4
    assert scale["encoder.patch_embed.pos_embed"] == 0.5**4
    assert scale["encoder.layers.0.attn.q_proj.weight"] == 0.5**3
    assert scale["encoder.layers.2.moe.experts.expert_weight"] == 0.5**1
    assert scale["encoder.norm.weight"] == scale["head.weight"] == 1.0
    assert wd["encoder.layers.1.moe.experts.expert_bias"] == 0.0  # a 2-D bias
    assert wd["encoder.layers.1.norm1.weight"] == wd["encoder.patch_embed.pos_embed"] == 0.0
    assert wd["encoder.layers.1.attn.k_proj.bias"] == 0.0
    assert wd["encoder.layers.1.moe.experts.expert_weight"] == 0.05
    assert wd["encoder.layers.1.moe.gate.w_gate"] == 0.05
    assert len(scale) == len(list(model.parameters()))


def test_optimizers_and_linear_scaling_rule():
    model = mlit.create_model("mlit_micro", num_classes=10)
    stage = Stage(epochs=2, batch_size=512, base_lr=1e-3, optimizer="sgd", momentum=0.99)
    opt = build_optimizer(model, stage)
    assert stage.lr == pytest.approx(2e-3)
    assert type(opt).__name__ == "SGD" and opt.defaults["momentum"] == 0.99


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_the_cpu_optimisers_are_fused_and_step_as_the_per_tensor_loop(optimizer):
    """On the CPU too the optimisers are PyTorch's fused ones (one pass a tensor), and their
    steps are the per-tensor loop's (torch's CPU default) up to float rounding: the same
    gradients, three steps, the groups' own learning rates and weight decays."""
    import torch

    torch.manual_seed(0)
    model = mlit.create_model("mlit_micro", num_classes=10)
    stage = Stage(epochs=2, batch_size=256, base_lr=1e-2, optimizer=optimizer, momentum=0.9,
                  layer_decay=0.75)
    fused = build_optimizer(model, stage)
    assert [g["fused"] for g in fused.param_groups] == [True] * len(fused.param_groups)
    twin = mlit.create_model("mlit_micro", num_classes=10)
    twin.load_state_dict(model.state_dict())
    twins = dict(twin.named_parameters())
    loop = type(fused)([{**g, "params": [twins[n] for n in g["names"]],
                         "fused": None, "foreach": False} for g in fused.param_groups])
    for group in (*fused.param_groups, *loop.param_groups):  # as the runner sets them
        group["lr"] = stage.lr * group["lr_scale"]  # lr_at x the layer's scale
    start = [p.detach().clone() for p in model.parameters()]
    for _ in range(3):
        for p, q in zip(model.parameters(), twin.parameters()):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        fused.step()
        loop.step()
    pairs = list(zip(model.parameters(), twin.parameters()))
    assert max((p - q).abs().max().item() for p, q in pairs) < 1e-6
    assert min((p - s).abs().max().item() for p, s in zip(model.parameters(), start)) > 1e-4


def test_warmup_then_cosine_per_step():
    stage = Stage(epochs=10, batch_size=256, base_lr=1e-3, min_lr=1e-5)
    lrs = [lr_at(s, 100, 10, stage) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert lrs[10] == pytest.approx(1e-3)
    assert lrs[55] == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] > 1e-5
    flat = Stage(epochs=10, batch_size=256, base_lr=1e-3, schedule="constant")
    assert lr_at(90, 100, 0, flat) == pytest.approx(1e-3)
