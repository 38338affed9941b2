"""Grouped-query attention (mlit/model/attention.py) against a hand computation, and as plain
multi-head attention when every head has its own key/value group."""

import math

import pytest
import torch

from mlit.model.attention import GroupedQueryAttention


def hand_attention(attn: GroupedQueryAttention, x: torch.Tensor) -> torch.Tensor:
    """Softmax(q k^T / sqrt(hd)) v per query head, query head i reading kv head i // (H/G)."""
    B, N, d = x.shape
    H, G, hd = attn.num_heads, attn.num_kv_groups, attn.head_dim
    q = attn.q_proj(x).view(B, N, H, hd)
    k = attn.k_proj(x).view(B, N, G, hd)
    v = attn.v_proj(x).view(B, N, G, hd)
    heads = []
    for i in range(H):
        g = i // (H // G)
        scores = torch.einsum("bnd,bmd->bnm", q[:, :, i], k[:, :, g]) / math.sqrt(hd)
        heads.append(torch.einsum("bnm,bmd->bnd", scores.softmax(-1), v[:, :, g]))
    return attn.o_proj(torch.cat(heads, dim=-1))


@pytest.mark.parametrize("groups", [4, 2, 1])
def test_gqa_matches_hand_computation(groups):
    attn = GroupedQueryAttention(32, num_heads=4, num_kv_groups=groups)
    x = torch.randn(2, 7, 32)
    torch.testing.assert_close(attn(x), hand_attention(attn, x), atol=1e-5, rtol=1e-5)


def test_gqa_with_g_equal_h_is_plain_multi_head_attention():
    attn = GroupedQueryAttention(24, num_heads=6, num_kv_groups=6)
    mha = torch.nn.MultiheadAttention(24, 6, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([attn.q_proj.weight, attn.k_proj.weight,
                                            attn.v_proj.weight]))
        mha.in_proj_bias.copy_(torch.cat([attn.q_proj.bias, attn.k_proj.bias,
                                          attn.v_proj.bias]))
        mha.out_proj.weight.copy_(attn.o_proj.weight)
        mha.out_proj.bias.copy_(attn.o_proj.bias)
    x = torch.randn(3, 5, 24)
    torch.testing.assert_close(attn(x), mha(x, x, x, need_weights=False)[0],
                               atol=1e-5, rtol=1e-5)


def test_gqa_shapes_and_kv_projection_size():
    attn = GroupedQueryAttention(144, num_heads=8, num_kv_groups=4)
    assert attn.k_proj.weight.shape == (72, 144) and attn.v_proj.weight.shape == (72, 144)
    assert attn(torch.randn(2, 145, 144)).shape == (2, 145, 144)


def test_gqa_rejects_impossible_shapes():
    with pytest.raises(ValueError, match="num_heads"):
        GroupedQueryAttention(30, num_heads=4, num_kv_groups=2)
    with pytest.raises(ValueError, match="num_kv_groups"):
        GroupedQueryAttention(32, num_heads=4, num_kv_groups=3)
