"""MLiTConfig (mlit/model/config.py): impossible shapes name their field, and the named sizes
have the paper's parameter counts."""

import json

import pytest

import mlit

from helpers import tool


@pytest.mark.parametrize("overrides,field", [
    (dict(embed_dim=100), "embed_dim"),  # not divisible by 8 heads
    (dict(num_kv_groups=3), "num_heads"),  # 8 heads not divisible by 3 groups
    (dict(top_k=4), "top_k"),  # more than the 3 experts of the first stage
    (dict(hidden_last=0), "hidden_last"),
    (dict(hidden_first=-2), "hidden_first"),
    (dict(decoder_embed_dim=100), "decoder_embed_dim"),
    (dict(image_size=35), "image_size"),
    (dict(head="conv"), "head"),
    (dict(moe_impl="cuda"), "moe_impl"),
    (dict(mask_ratio=1.0), "mask_ratio"),
    (dict(expert_stages=()), "expert_stages"),
])
def test_impossible_configurations_name_the_field(overrides, field):
    with pytest.raises(ValueError, match=rf"^{field}="):
        mlit.create_model("mlit_s", **overrides)


def test_unknown_field_and_model_are_named():
    with pytest.raises(ValueError, match="embed_dims: unknown model field; known fields: "):
        mlit.create_model("mlit_s", embed_dims=3)
    with pytest.raises(ValueError, match="name='mlit_m': unknown model; choose one of mlit_s, "):
        mlit.create_model("mlit_m")


def test_param_counts_match_the_paper(capsys):
    tool("param_count").main(["--json"])  # what `python tools/param_count.py --json` prints
    counts = json.loads(capsys.readouterr().out)
    paper = {"mlit_s": (2.36, 2.38), "mlit_xs": (1.21, 1.22), "mlit_xxs": (0.66, 0.67)}
    assert set(counts) == set(paper)
    for name, (encoder, classifier) in paper.items():
        assert abs(counts[name]["encoder"] / 1e6 - encoder) <= 0.01, name
        assert round(counts[name]["classifier"] / 1e6, 2) == classifier, name
        assert abs(counts[name]["decoder"] / 1e6 - 0.34) <= 0.01, name
    assert counts["mlit_s"]["encoder"] == 2_368_610  # docs/architecture.md: 2,368,610
    assert counts["mlit_s"]["decoder"] == 337_140
    # forward FLOPs of one 36x36 image (torch.utils.flop_counter) and parameters per token
    assert counts["mlit_s"]["flops"] == 727_529_760
    assert counts["mlit_s"]["active_params"] == 1_948_590
    assert counts["mlit_xxs"]["flops"] < counts["mlit_xs"]["flops"] < counts["mlit_s"]["flops"]
