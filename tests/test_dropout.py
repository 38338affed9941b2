"""mlit's Dropout: on the CPU a mask of 16 random bits a value (mlit/model/dropout.py), with
nn.Dropout's rate, mean, gradient and seeding; F.dropout wherever a graph records it."""

import pytest
import torch
import torch.nn.functional as F

from mlit.model.dropout import LEVELS, Dropout


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_the_cpu_mask_drops_p_of_the_values_in_every_lane_and_keeps_the_mean(p):
    torch.manual_seed(0)
    x = torch.ones(1000, 1000)
    y = Dropout(p).train()(x)
    kept = round((1 - p) * LEVELS)
    assert y.unique().tolist() == [0.0, pytest.approx(LEVELS / kept)]
    dropped = (y == 0).flatten().view(-1, 4).float()  # four values from each 64-bit draw
    tolerance = 5 * (p * (1 - p) / dropped.shape[0]) ** 0.5  # five standard deviations
    assert dropped.mean(0).sub(1 - kept / LEVELS).abs().max() < tolerance
    assert y.mean().item() == pytest.approx(1.0, abs=5 * (p / (1 - p) / x.numel()) ** 0.5)


def test_the_gradient_is_the_mask_and_a_seed_draws_the_same_mask():
    x = torch.randn(64, 33, requires_grad=True)
    dropout = Dropout(0.1).train()
    torch.manual_seed(1)
    y = dropout(x)
    y.backward(torch.ones_like(y))
    mask = y.detach() / x.detach()
    torch.testing.assert_close(x.grad, mask)
    torch.manual_seed(1)
    assert torch.equal(dropout(x), y)
    assert not torch.equal(dropout(x), y)  # the generator moved on


def test_evaluation_mode_and_zero_are_the_identity():
    x = torch.randn(4, 5)
    assert Dropout(0.1).eval()(x) is x
    assert Dropout(0.0).train()(x) is x


def test_rates_the_mask_cannot_resolve_are_torchs_dropout():
    x = torch.ones(100, 100)
    assert torch.equal(Dropout(1.0).train()(x), torch.zeros_like(x))
    torch.manual_seed(2)
    tiny = Dropout(1e-6).train()(x)  # under half a level: F.dropout, drawn with bernoulli_
    torch.manual_seed(2)
    assert torch.equal(tiny, F.dropout(x, 1e-6, True))


def test_a_graph_records_torchs_dropout():
    x = torch.ones(10_000)
    traced = torch.fx.symbolic_trace(torch.nn.Sequential(Dropout(0.1)).train())
    assert [node.target for node in traced.graph.nodes] == ["input", F.dropout, "output"]
    scripted = torch.jit.script(Dropout(0.1).train())
    for graph in (traced, scripted):
        torch.manual_seed(3)
        y = graph(x)
        torch.manual_seed(3)
        assert torch.equal(y, F.dropout(x, 0.1, True))  # bernoulli_'s mask, not the lanes
