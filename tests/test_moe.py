import pytest
import torch

from mlit.dispatch import expert_mixture
from mlit.moe import MoELayer, NoisyTopKGate, cv_squared


def make_gate(dim=16, experts=4, k=2, **kw):
    return NoisyTopKGate(dim, experts, k, **kw)


def test_exactly_k_nonzero_gates_summing_to_one():
    gate = make_gate(experts=5, k=2).train()
    gates, _, load = gate(torch.randn(64, 16))
    assert gates.shape == (64, 5)
    assert ((gates > 0).sum(1) == 2).all()
    torch.testing.assert_close(gates.sum(1), torch.ones(64))
    assert load.sum() == 64 * 2


def test_eval_mode_has_no_noise():
    gate = make_gate().eval()
    x = torch.randn(32, 16)
    g1, _, _ = gate(x)
    g2, _, _ = gate(x)
    assert torch.equal(g1, g2)
    clean = x @ gate.w_gate  # eval routes on the clean logits alone
    top_vals, top_idx = clean.topk(2, dim=1)
    expected = torch.zeros_like(clean).scatter(1, top_idx, top_vals.softmax(1))
    torch.testing.assert_close(g1, expected)
    gate.train()
    assert not torch.equal(gate(x)[0], g1)  # training draws noise


def test_load_probability_matches_the_definition():
    """P(x, i) = Phi((c_i - t_i) / s_i), t_i the k-th largest noisy logit of the other experts."""
    gate = make_gate(experts=4, k=2)
    clean = torch.tensor([[0.2, 0.5, -0.1, 0.9], [1.0, -1.0, 0.3, 0.0]])
    noisy = torch.tensor([[0.1, 0.7, 0.0, 1.2], [0.8, -0.7, 0.5, -0.2]])
    std = torch.tensor([[0.5, 1.0, 2.0, 0.25], [1.0, 1.0, 0.5, 0.5]])
    top_vals = noisy.topk(3, dim=1).values
    got = gate.load_probability(clean, noisy, std, top_vals)
    normal = torch.distributions.Normal(0.0, 1.0)
    for n in range(2):
        for i in range(4):
            others = torch.cat([noisy[n, :i], noisy[n, i + 1:]])
            t = others.sort(descending=True).values[1]  # k-th (2nd) largest among the others
            assert got[n, i].item() == pytest.approx(
                normal.cdf((clean[n, i] - t) / std[n, i]).item(), abs=1e-6)


def collapsed_and_balanced_losses():
    torch.manual_seed(1)
    x = torch.randn(256, 16)
    balanced = make_gate()
    collapsed = make_gate()
    with torch.no_grad():
        x[:, 0] = 3.0  # a constant feature that the collapsed router keys on
        collapsed.w_gate.zero_()
        collapsed.w_gate[0] = torch.tensor([5.0, 4.0, 0.0, 0.0])
        balanced.w_gate.normal_()
        collapsed.w_noise.copy_(balanced.w_noise)
    return collapsed, balanced, x


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_aux_losses_are_non_negative_and_larger_when_collapsed(mode):
    collapsed, balanced, x = collapsed_and_balanced_losses()
    for gate in (collapsed, balanced):
        getattr(gate, mode)()
    # Separate the two losses: importance only, then load only.
    results = {}
    for part, weights in {"importance": (1.0, 0.0), "load": (0.0, 1.0)}.items():
        for gate in (collapsed, balanced):
            gate.importance_weight, gate.load_weight = weights
        results[part] = (collapsed(x)[1].item(), balanced(x)[1].item())
    for part, (bad, good) in results.items():
        assert bad >= 0 and good >= 0, part
        assert bad > 5 * good, (part, bad, good)


def test_cv_squared_is_population_variance_over_mean_squared():
    v = torch.tensor([1.0, 2.0, 3.0, 6.0])
    assert cv_squared(v, 0.0).item() == pytest.approx(v.var(unbiased=False) / v.mean() ** 2)
    assert cv_squared(torch.ones(5), 1e-10).item() == 0.0


def dispatch_inputs(N=40, d=12, h=7, E=4, k=2):
    x = torch.randn(N, d)
    logits = torch.randn(N, E)
    vals, idx = logits.topk(k, dim=1)
    gates = torch.zeros(N, E).scatter(1, idx, vals.softmax(1))
    weights = [torch.randn(E, d, h) * 0.3, torch.randn(E, h) * 0.1, torch.randn(h, d) * 0.3,
               torch.randn(h) * 0.1, torch.randn(d, h) * 0.3, torch.randn(d) * 0.1]
    return x, gates, weights


def formula(x, gates, w, b, v_w, v_b, o_w, o_b):
    """sum_e g_e * E_e(x) with E_e(x) = (silu(x W_e + b_e) * (x V + c)) W2 + b2, term by term."""
    value = x @ v_w.t() + v_b
    out = torch.zeros(x.shape[0], o_w.shape[0])
    for e in range(gates.shape[1]):
        expert_e = (torch.nn.functional.silu(x @ w[e] + b[e]) * value) @ o_w.t() + o_b
        out += gates[:, e:e + 1] * expert_e
    return out


@pytest.mark.parametrize("impl", ["torch", "dense"])
def test_dispatch_equals_the_sum_of_gated_experts(impl):
    x, gates, weights = dispatch_inputs()
    torch.testing.assert_close(expert_mixture(x, gates, *weights, impl=impl),
                               formula(x, gates, *weights), atol=1e-5, rtol=1e-5)


def test_torch_dispatch_skips_unrouted_pairs():
    """An expert no token chose is never computed: NaN weights there cannot reach the output
    (a dense implementation would multiply NaN by a zero gate and return NaN)."""
    x, gates, weights = dispatch_inputs(E=4)
    gates[:, 3] = 0
    gates = gates / gates.sum(1, keepdim=True)
    weights[0][3] = float("nan")
    assert torch.isfinite(expert_mixture(x, gates, *weights, impl="torch")).all()
    assert torch.isnan(expert_mixture(x, gates, *weights, impl="dense")).any()


@pytest.mark.parametrize("impl", ["torch", "dense"])
def test_output_ignores_experts_a_token_is_not_routed_to(impl):
    x, gates, weights = dispatch_inputs()
    before = expert_mixture(x, gates, *weights, impl=impl)
    weights[0] = weights[0].clone()
    weights[0][2] += 1.0  # change expert 2 only
    after = expert_mixture(x, gates, *weights, impl=impl)
    routed = gates[:, 2] > 0
    assert routed.any() and (~routed).any()
    torch.testing.assert_close(after[~routed], before[~routed], atol=1e-6, rtol=0)
    assert not torch.allclose(after[routed], before[routed])


def test_torch_and_dense_dispatch_have_equal_gradients():
    x, gates, weights = dispatch_inputs()
    grads = {}
    for impl in ("torch", "dense"):
        inputs = [t.clone().requires_grad_() for t in (x, gates, *weights)]
        expert_mixture(*inputs, impl=impl).pow(2).sum().backward()
        grads[impl] = [t.grad for t in inputs]
        grads[impl][1] = grads[impl][1] * (gates > 0)  # the contract: routed gates only
    assert (grads["torch"][1] != 0).sum() == (gates > 0).sum()
    for a, b in zip(grads["torch"], grads["dense"]):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_moe_layer_shapes_and_load_bookkeeping():
    layer = MoELayer(16, hidden=8, num_experts=3, top_k=2, dropout=0.1).train()
    y, aux = layer(torch.randn(2, 5, 16))
    assert y.shape == (2, 5, 16) and aux.shape == () and aux.item() >= 0
    assert layer.last_load.shape == (3,) and layer.last_load.sum().item() == 2 * 5 * 2


def test_gate_rejects_k_larger_than_experts():
    with pytest.raises(ValueError, match="top_k=4"):
        NoisyTopKGate(8, num_experts=3, top_k=4)
