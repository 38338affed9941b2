"""mmLiT, the masked auto-encoder (mlit/model/mae.py): random masking that keeps the dummy
patch, shapes, the loss's three terms, gradients, and its encoder in the classifier."""

import pytest
import torch

import mlit
from mlit.model.encoder import patchify
from mlit.model.mae import random_masking


def test_masking_keeps_36_random_patches_plus_the_dummy():
    tokens = torch.randn(4, 145, 8)
    visible, mask, restore = random_masking(tokens, 0.75)
    assert visible.shape == (4, 37, 8)
    assert (mask.sum(1) == 108).all()
    torch.testing.assert_close(visible[:, -1], tokens[:, -1])  # the dummy is always kept, last
    for b in range(4):  # the visible tokens are exactly the unmasked patches
        kept = tokens[b, :144][mask[b] == 0]
        assert sorted(kept[:, 0].tolist()) == sorted(visible[b, :-1, 0].tolist())
    assert not torch.equal(mask[0], mask[1])  # random per image
    assert torch.equal(restore.argsort(1).gather(1, restore), torch.arange(144).expand(4, -1))


def test_mae_shapes_and_decoder_sees_all_positions():
    mae = mlit.create_mae("mlit_xxs")
    out = mae(torch.randn(2, 3, 36, 36))
    assert out.pred.shape == (2, 144, 27) and out.mask.shape == (2, 144)
    assert (out.mask.sum(1) == 108).all()


@pytest.mark.parametrize("w_unmasked,w_moe", [(0.1, 0.5), (0.3, 0.0), (0.0, 2.0)])
def test_loss_is_masked_plus_weighted_unmasked_plus_weighted_moe(w_unmasked, w_moe):
    mae = mlit.create_mae("mlit_micro", unmasked_loss_weight=w_unmasked, moe_loss_weight=w_moe)
    imgs = torch.randn(3, 3, 12, 12)
    out = mae(imgs)
    err = ((out.pred - patchify(imgs, 3)) ** 2).mean(-1)
    masked = err[out.mask == 1].mean()
    unmasked = err[out.mask == 0].mean()
    torch.testing.assert_close(out.masked_loss, masked)
    torch.testing.assert_close(out.unmasked_loss, unmasked)
    assert out.moe_loss.item() > 0
    torch.testing.assert_close(out.loss, masked + w_unmasked * unmasked + w_moe * out.moe_loss)


def test_gradients_reach_every_mae_parameter():
    mae = mlit.create_mae("mlit_micro", expert_dropout=0.0).train()
    mae(torch.randn(16, 3, 12, 12)).loss.backward()
    missing = [n for n, p in mae.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert missing == []


def test_pretrained_encoder_loads_into_the_classifier():
    mae = mlit.create_mae("mlit_micro")
    clf = mlit.create_model("mlit_micro", num_classes=10)
    clf.encoder.load_state_dict(mae.encoder.state_dict())
    for (n, a), b in zip(mae.encoder.state_dict().items(), clf.encoder.state_dict().values()):
        assert torch.equal(a, b), n
