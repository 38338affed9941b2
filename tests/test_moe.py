"""The mixture of experts (mlit/model/moe.py, dispatch.py, mixtures.py): noisy top-k gating,
its balancing losses, and every dispatch and sharing arrangement against the sum of gated experts."""

import pytest
import torch

from mlit.model.dispatch import expert_mixture
from mlit.model.moe import MoELayer, NoisyTopKGate, cv_squared


def test_one_declaration_of_the_sharing_arrangements():
    """mlit.kernels.arrangements: the table, the forms TorchScript compiles, the model's
    parameters, the kernel's switch and the dispatch's list all say the same thing."""
    from mlit.kernels.arrangements import ARRANGEMENTS, SHARED, own_and_common, owns_w2
    from mlit.kernels.support import TRITON_ARRANGEMENTS
    from mlit.model.dispatch import TRITON_SHARED
    from mlit.model.moe import SharedSwiGLUExperts

    assert SHARED == ("v_w2", "w_w2", "w_v") and TRITON_SHARED == ("v_w2", "w_w2")
    projections = {"w": "swish_proj", "v": "value_proj", "w2": "out_proj"}
    for name, a in ARRANGEMENTS.items():
        assert owns_w2(name) == (not a.w2_shared) == (a.owned == "w2")
        experts = SharedSwiGLUExperts(8, 6, 3, shared=name)
        assert not hasattr(experts, projections[a.owned])  # the expert-owned one is stacked
        assert all(hasattr(experts, p) for o, p in projections.items() if o != a.owned)
        if a.w2_shared:
            own, _, common, _, swish_own = own_and_common(name, "W", "b", "V", "c")
            assert (own.lower(), common.lower(), swish_own) == (
                a.owned, {"w": "v", "v": "w"}[a.owned], a.swish_on_own)
            assert TRITON_ARRANGEMENTS[name] == (not a.swish_on_own)  # SWISH_SHARED


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


@pytest.mark.parametrize("swish", [True, False])
def test_the_routed_projections_written_out_backward_passes_gradcheck(swish):
    """RoutedProjection (the sparse reference's per-expert loop, mlit/model/mixtures.py) has a
    hand-written backward: float64 finite differences for every input, with one expert that no
    token chose (its weight gradient must be exactly 0, its gate column untouched)."""
    from mlit.model.mixtures import RoutedProjection

    g = torch.Generator().manual_seed(0)
    N, d, h, E = 9, 5, 4, 4
    z = torch.randn(N, d, generator=g, dtype=torch.float64)
    vals, idx = torch.randn(N, E - 1, generator=g, dtype=torch.float64).topk(2, dim=1)
    gates = torch.zeros(N, E, dtype=torch.float64).scatter(1, idx, vals.softmax(1))  # E-1 unused
    weight = torch.randn(E, d, h, generator=g, dtype=torch.float64)
    bias = torch.randn(E, h, generator=g, dtype=torch.float64)
    inputs = [t.requires_grad_() for t in (z, gates, weight, bias)]
    routed_only = gates > 0  # the contract defines the gate gradient there alone

    def fn(z, gates, weight, bias):  # gates perturbed where routed only, the routing fixed
        return RoutedProjection.apply(z, gates * routed_only, weight, bias, swish)

    assert torch.autograd.gradcheck(fn, inputs)
    fn(*inputs).sum().backward()
    assert (weight.grad[E - 1] == 0).all() and (bias.grad[E - 1] == 0).all()
    assert weight.grad[:E - 1].abs().sum() > 0
    z_grad, gates_grad = z.grad, gates.grad
    z.grad = gates.grad = None  # frozen experts: the other gradients alone, the same values
    RoutedProjection.apply(z, gates, weight.detach(), bias.detach(), swish).sum().backward()
    assert torch.equal(z.grad, z_grad) and torch.equal(gates.grad, gates_grad)
    assert (gates.grad[:, E - 1] == 0).all()


def test_the_gated_sums_written_out_backward_passes_gradcheck():
    """GatedSum (the dense mixture's sum_e g_ne a_ne, mlit/model/mixtures.py) has a
    hand-written backward: float64 finite differences for the gates and the outputs, and
    the same values as the einsum a graph records in its place."""
    from mlit.model.mixtures import GatedSum

    g = torch.Generator().manual_seed(0)
    gates = torch.rand(7, 3, generator=g, dtype=torch.float64).requires_grad_()
    acts = torch.randn(7, 3, 5, generator=g, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(GatedSum.apply, (gates, acts))
    torch.testing.assert_close(GatedSum.apply(gates, acts),
                               torch.einsum("ne,neh->nh", gates, acts), atol=1e-12, rtol=0)
    GatedSum.apply(gates.detach(), acts).sum().backward()  # fixed gates: the outputs' alone
    assert gates.grad is None
    torch.testing.assert_close(acts.grad, gates.detach().unsqueeze(2).expand_as(acts))


def test_the_sparse_reference_runs_in_autocasts_dtype_and_returns_fp32_gradients():
    """Under autocast (the CPU's bf16 here; CUDA's the same way) the products run in bf16, as
    autocast would run them, and the gradients come back in the parameters' fp32."""
    x, gates, weights = dispatch_inputs()
    inputs = [t.clone().requires_grad_() for t in (x, gates, *weights)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = expert_mixture(*inputs, impl="torch")
    assert out.dtype == torch.bfloat16
    out.float().pow(2).sum().backward()
    assert all(t.grad is not None and t.grad.dtype == torch.float32 for t in inputs)
    torch.testing.assert_close(out.float(), formula(x, gates, *weights), atol=0.1, rtol=0.05)


def test_moe_layer_shapes_and_load_bookkeeping():
    layer = MoELayer(16, hidden=8, num_experts=3, top_k=2, dropout=0.1).train()
    y, aux = layer(torch.randn(2, 5, 16))
    assert y.shape == (2, 5, 16) and aux.shape == () and aux.item() >= 0
    assert layer.last_load.shape == (3,) and layer.last_load.sum().item() == 2 * 5 * 2


def test_gate_rejects_k_larger_than_experts():
    with pytest.raises(ValueError, match="top_k=4"):
        NoisyTopKGate(8, num_experts=3, top_k=4)


# -- Table 9: which two projections the experts share -------------------------------------------
def arrangement_inputs(shared, N=40, d=12, h=7, E=4, k=2, seed=0):
    """Tokens, top-k gates and (W, b, V, c, W2, b2): the owned projection stacked per expert,
    the shared two in nn.Linear's layout (mlit.model.dispatch's contract)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, d, generator=g)
    vals, idx = torch.randn(N, E, generator=g).topk(k, dim=1)
    gates = torch.zeros(N, E).scatter(1, idx, vals.softmax(1))
    owned = {"v_w2": "w", "w_w2": "v", "w_v": "w2"}[shared]
    shapes = {"w": ((h, d), (E, d, h)), "v": ((h, d), (E, d, h)), "w2": ((d, h), (E, h, d))}
    weights = []
    for name in ("w", "v", "w2"):
        shape = shapes[name][owned == name]
        weights += [torch.randn(*shape, generator=g) * 0.3,
                    torch.randn(*(shape[:-2] + shape[-1:] if owned == name else shape[:1]),
                                generator=g) * 0.1]
    return x, gates, weights


def expert_output(x, e, shared, w, b, v, c, w2, b2):
    """E_e(x) = (silu(x W + b) * (x V + c)) W2 + b2 with expert e's own projection."""
    silu = torch.nn.functional.silu
    swish = silu(x @ w[e] + b[e]) if shared == "v_w2" else silu(x @ w.t() + b)
    value = x @ v[e] + c[e] if shared == "w_w2" else x @ v.t() + c
    if shared == "w_v":
        return (swish * value) @ w2[e] + b2[e]
    return (swish * value) @ w2.t() + b2


@pytest.mark.parametrize("shared", ["v_w2", "w_w2", "w_v"])
@pytest.mark.parametrize("impl", ["torch", "dense"])
def test_every_arrangement_equals_its_sum_of_gated_experts(shared, impl):
    x, gates, weights = arrangement_inputs(shared)
    expected = sum(gates[:, e:e + 1] * expert_output(x, e, shared, *weights)
                   for e in range(gates.shape[1]))
    got = expert_mixture(x, gates, *weights, shared=shared, impl=impl)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shared", ["w_w2", "w_v"])
def test_torch_and_dense_gradients_agree_for_every_arrangement(shared):
    x, gates, weights = arrangement_inputs(shared)
    grads = {}
    for impl in ("torch", "dense"):
        inputs = [t.clone().requires_grad_() for t in (x, gates, *weights)]
        expert_mixture(*inputs, shared=shared, impl=impl).pow(2).sum().backward()
        grads[impl] = [t.grad * (gates > 0) if i == 1 else t.grad
                       for i, t in enumerate(inputs)]
    for a, b in zip(grads["torch"], grads["dense"]):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("shared", ["v_w2", "w_w2", "w_v"])
def test_auto_on_the_cpu_is_dense_up_to_the_measured_unrouted_count(shared, monkeypatch):
    """N x (E - k) x h, the activations of experts a token is not routed to, at the rule's
    bound: `auto` runs the dense mixture; one value more: the sparse reference
    (mlit.model.dispatch.CPU_DENSE_MAX_UNROUTED), in every arrangement."""
    import mlit.model.dispatch as dispatch

    ran = []
    for name in ("torch_expert_mixture", "dense_expert_mixture"):
        def spy(*args, name=name, fn=getattr(dispatch, name)):
            ran.append(name.split("_")[0])
            return fn(*args)
        monkeypatch.setattr(dispatch, name, spy)
    x, gates, weights = arrangement_inputs(shared, N=40, h=7, E=4, k=2)
    for bound in (40 * (4 - 2) * 7, 40 * (4 - 2) * 7 - 1):
        monkeypatch.setattr(dispatch, "CPU_DENSE_MAX_UNROUTED", bound)
        expert_mixture(x, gates, *weights, shared=shared, impl="auto", top_k=2)
    assert ran == ["dense", "torch"]


def test_arrangements_own_different_parameters():
    import mlit

    counts = {s: sum(p.numel() for p in mlit.create_model("mlit_s", shared=s).parameters())
              for s in ("v_w2", "w_w2", "w_v")}
    # W and V have the same shape (d -> h), so owning one or the other costs the same;
    # owning W2 (h -> d, bias d) instead moves E - 1 bias vectors from size h to size d:
    # (E - 1)(d - h) more per layer, as d >= h in every layer
    assert counts["v_w2"] == counts["w_w2"] == 2_383_010
    cfg = mlit.model_config("mlit_s")
    extra = sum((e - 1) * (cfg.embed_dim - h) for h, e in
                zip(cfg.hidden_sizes(), cfg.experts_per_layer()))
    assert counts["w_v"] == counts["v_w2"] + extra == 2_384_868
    experts = mlit.create_model("mlit_s", shared="w_v").encoder.layers[0].moe.experts
    assert experts.expert_weight.shape == (3, 144, 144) and experts.expert_bias.shape == (3, 144)
    assert not hasattr(experts, "out_proj") and hasattr(experts, "swish_proj")


def test_the_triton_kernel_refuses_an_arrangement_it_cannot_fuse():
    import mlit

    with pytest.raises(ValueError, match="^moe_impl='triton': the Triton kernel serves "
                                         "shared=v_w2 and w_w2; with shared=w_v"):
        mlit.create_model("mlit_s", shared="w_v", moe_impl="triton")
    x, gates, weights = arrangement_inputs("w_v")
    with pytest.raises(ValueError, match="moe_impl=triton does not support shared=w_v"):
        expert_mixture(x, gates, *weights, shared="w_v", impl="triton")
    from mlit.model.dispatch import resolve_impl

    meta = torch.empty(1, device="meta")
    assert resolve_impl("auto", meta, "w_v") == "torch"
