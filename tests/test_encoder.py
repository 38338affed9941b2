"""The mLiT encoder and classifier (mlit/model/encoder.py): depth-wise scaling and expert
stages, patchify, the dummy patch the classifier reads, shapes and gradients."""

import pytest
import torch

import mlit
from mlit.model.encoder import patchify, unpatchify

SCHEDULES = {  # h_l = h1 - floor((h1 - hL) * l / (L - 1)) and the 3 -> 4 -> 5 stages
    "mlit_s": ([144, 139, 134, 129, 124, 119, 114, 108, 103, 98, 93, 88, 83, 78, 72],
               [3] * 5 + [4] * 5 + [5] * 5),
    "mlit_xs": ([96, 91, 85, 79, 73, 67, 62, 56, 50, 44, 38, 32], [3] * 4 + [4] * 4 + [5] * 4),
    "mlit_xxs": ([81, 75, 68, 61, 54, 48, 41, 34, 27], [3] * 3 + [4] * 3 + [5] * 3),
}


@pytest.mark.parametrize("name", SCHEDULES)
def test_hidden_schedule_and_expert_stages(name):
    hidden, experts = SCHEDULES[name]
    cfg = mlit.model_config(name)
    assert cfg.hidden_sizes() == hidden and cfg.experts_per_layer() == experts
    model = mlit.create_model(name)
    for layer, h, e in zip(model.encoder.layers, hidden, experts):
        assert layer.moe.experts.expert_weight.shape == (e, cfg.embed_dim, h)
        assert layer.moe.experts.value_proj.weight.shape == (h, cfg.embed_dim)
        assert layer.moe.gate.w_gate.shape == (cfg.embed_dim, e)


def test_patchify_round_trip_and_order():
    imgs = torch.randn(2, 3, 36, 36)
    patches = patchify(imgs, 3)
    assert patches.shape == (2, 144, 27)
    # patch 13 is row 1, column 1: pixels [3:6, 3:6], channels last
    torch.testing.assert_close(patches[:, 13], imgs[:, :, 3:6, 3:6].permute(0, 2, 3, 1)
                               .reshape(2, 27))
    torch.testing.assert_close(unpatchify(patches, 3, 3), imgs)


def test_dummy_patch_is_zero_and_gets_only_its_position():
    model = mlit.create_model("mlit_micro", num_classes=10)
    tokens = model.encoder.patch_embed(torch.randn(4, 3, 12, 12))
    assert tokens.shape == (4, 17, 16)
    torch.testing.assert_close(tokens[:, -1], model.encoder.patch_embed.pos_embed[0, -1]
                               .expand(4, -1))


def test_shapes_through_the_encoder_and_classifier():
    model = mlit.create_model("mlit_xxs", num_classes=10).eval()
    tokens, moe_loss = model.encoder(torch.randn(2, 3, 36, 36))
    assert tokens.shape == (2, 145, 108) and moe_loss.shape == ()
    logits, _ = model(torch.randn(2, 3, 36, 36))
    assert logits.shape == (2, 10)


def test_classifier_reads_the_dummy_patch():
    model = mlit.create_model("mlit_micro", num_classes=5).eval()
    imgs = torch.randn(3, 3, 12, 12)
    seen = {}
    model.head.register_forward_hook(lambda m, inp, out: seen.setdefault("x", inp[0]))
    model(imgs)
    tokens, _ = model.encoder(imgs)
    torch.testing.assert_close(seen["x"], tokens[:, -1])


def test_mlp_head():
    model = mlit.create_model("mlit_micro", num_classes=7, head="mlp")
    shapes = [tuple(p.shape) for p in model.head.parameters()]
    assert shapes == [(256, 16), (256,), (7, 256), (7,)]
    assert isinstance(model.head[1], torch.nn.ReLU)
    assert model(torch.randn(2, 3, 12, 12))[0].shape == (2, 7)


def test_gradients_reach_every_classifier_parameter():
    model = mlit.create_model("mlit_micro", num_classes=5, expert_dropout=0.0).train()
    logits, moe_loss = model(torch.randn(16, 3, 12, 12))
    (torch.nn.functional.cross_entropy(logits, torch.randint(0, 5, (16,))) + moe_loss).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert missing == []


def test_stochastic_depth_rates_grow_with_depth():
    model = mlit.create_model("mlit_micro", drop_path=0.2)
    assert [l.drop_path_rate for l in model.encoder.layers] == pytest.approx([0.0, 0.1, 0.2])


def test_dense_vit_reference_has_about_the_same_parameters():
    for name in ("mlit_s", "mlit_xxs"):
        moe = mlit.create_model(name)
        dense = mlit.create_model(name, ffn="mlp")
        n_moe = sum(p.numel() for p in moe.parameters())
        n_dense = sum(p.numel() for p in dense.parameters())
        assert abs(n_dense - n_moe) / n_moe < 0.005, (name, n_moe, n_dense)
        assert len(dense.encoder.layers) == len(moe.encoder.layers)
        logits, aux = dense(torch.randn(2, 3, 36, 36))
        assert logits.shape == (2, 100) and aux.item() == 0.0
