"""Mixture of experts: noisy top-k gating and shared-projection SwiGLU experts
(docs/architecture.md, sections 4-5).

Shazeer et al. 2017, "Outrageously large neural networks", with the mLiT twist that the
experts of a layer share two of their three projections and own the third: V and W2 shared
by default (paper Table 9, where this was best), or W and W2, or W and V (`shared`).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from mlit.kernels.arrangements import ARRANGEMENTS, SHARED
from mlit.model.capture import is_fx_tracing
from mlit.model.config import MLiTConfig
from mlit.model.dispatch import expert_mixture
from mlit.model.dropout import Dropout


class _SumOverRanks(torch.autograd.Function):
    """y = the sum of x over every process; x's gradient is the sum of y's over them."""

    @staticmethod
    def forward(ctx, x):
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


def global_sum(values: torch.Tensor) -> torch.Tensor:
    """The sum over every process of a data-parallel run (torch.distributed's default group),
    with its gradient, so that the balancing losses are those of the global batch and do not
    depend on how many GPUs share it (docs/distributed.md); the tensor itself in one process."""
    if torch.jit.is_scripting():  # a scripted model runs in one process
        return values
    if torch.is_grad_enabled() and dist.is_available() and dist.is_initialized() \
            and dist.get_world_size() > 1:
        return _SumOverRanks.apply(values)
    return values


def autocast_on(x: torch.Tensor) -> bool:
    """Whether autocast is on for x's device (never on the meta device)."""
    return x.device.type in ("cpu", "cuda", "xpu", "mps", "hpu") \
        and torch.is_autocast_enabled(x.device.type)


def cv_squared(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Squared coefficient of variation over experts (the last dimension): population
    var / (mean^2 + eps), in at least fp32 (one expert: a variance of 0, so 0)."""
    x = x.to(routing_dtype(x))
    return x.var(-1, unbiased=False) / (x.mean(-1) ** 2 + eps)


def routing_dtype(x: torch.Tensor) -> torch.dtype:
    """Routing runs in fp32 (fp64 for a float64 model): top-k ties and the normal CDF are
    touchy in half precision."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


torch.fx.wrap("routing_dtype")  # a node of its own in an fx graph, which reads x's dtype then


class NoisyTopKGate(nn.Module):
    """Noisy top-k gating with the importance and load-balancing losses (section 4)."""

    def __init__(self, dim: int, num_experts: int, top_k: int, noisy: bool = True,
                 noise_epsilon: float = 1e-2, importance_weight: float = 0.01,
                 load_weight: float = 0.01, cv_epsilon: float = 1e-10):
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k={top_k}: must be between 1 and num_experts={num_experts}")
        self.num_experts, self.top_k, self.noisy = num_experts, top_k, noisy
        self.noise_epsilon, self.cv_epsilon = noise_epsilon, cv_epsilon
        self.importance_weight, self.load_weight = importance_weight, load_weight
        self.w_gate = nn.Parameter(torch.empty(dim, num_experts))  # Wg
        self.w_noise = nn.Parameter(torch.empty(dim, num_experts))  # Wn
        # PyTorch's Linear default, as the paper uses default initialisation everywhere
        bound = 1 / math.sqrt(dim)
        nn.init.uniform_(self.w_gate, -bound, bound)
        nn.init.uniform_(self.w_noise, -bound, bound)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (N, d) -> gates (N, E) with k non-zeros per row, aux loss (), tokens per expert (E,).

        Routing runs in fp32 even under autocast (routing_dtype), so autocast is turned off
        around it where it is on.
        """
        if torch.jit.is_scripting():  # a scripted model runs without autocast
            return self.route(x)
        else:
            return self.route_outside_autocast(x)

    @torch.jit.unused
    def route_outside_autocast(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                                torch.Tensor]:
        if is_fx_tracing() or not autocast_on(x):  # fx records no autocast context
            return self.route(x)
        with torch.autocast(x.device.type, enabled=False):
            return self.route(x)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The gating itself (forward's contract), in routing_dtype."""
        dtype = routing_dtype(x)
        x = x.to(dtype)
        use_noise = self.noisy and self.training
        if use_noise:
            # c = x Wg and x Wn as one product: E-column products are bound by reading the
            # tokens, now read once (and twice, not four times, in the backward)
            clean, noise_logits = (x @ torch.cat([self.w_gate, self.w_noise], 1).to(dtype)) \
                .split(self.num_experts, dim=1)
            # softplus runs several times faster on a contiguous copy than on the strided half
            noise_std = F.softplus(noise_logits.contiguous()) + self.noise_epsilon  # s
            logits = clean + torch.randn_like(noise_std) * noise_std  # h = c + eps * s
        else:
            clean = x @ self.w_gate.to(dtype)  # c = x Wg
            logits = clean
            noise_std = clean  # read only with noise
        k = self.top_k
        top_vals, top_idx = logits.topk(min(k + 1, self.num_experts), dim=1)
        # softmax over the k kept logits, taken along dim 0 of their (k, N) transpose: ATen
        # vectorises a softmax over the tokens, not over a last dimension of k (forward and
        # backward 1.5x faster at 1,184 tokens, 2.3x at 4,640, on the CPU)
        top_k_gates = F.softmax(top_vals[:, :k].t(), dim=0).t()
        gates = torch.zeros_like(logits).scatter(1, top_idx[:, :k], top_k_gates)

        routed = gates > 0
        if use_noise and k < self.num_experts:
            load = self.load_probability(clean, logits, noise_std, top_vals).sum(0)
        else:  # without noise the load is the (non-differentiable) routed count
            load = routed.to(dtype).sum(0)
        # importance and load, summed over the global batch: under torchrun every rank's
        # tokens count (docs/distributed.md), so the losses are those of one process at that
        # batch; their two CV^2 in one call
        balance = global_sum(torch.stack([gates.sum(0), load]))
        cv = cv_squared(balance, self.cv_epsilon)
        aux = self.importance_weight * cv[0] + self.load_weight * cv[1]
        return gates, aux, routed.sum(0).detach()

    def load_probability(self, clean, noisy, noise_std, top_vals) -> torch.Tensor:
        """P(x, i) = Phi((c_i - t_i) / s_i): the chance that expert i stays in the top k when
        only its own noise is re-drawn. t_i is the k-th largest noisy logit among the *other*
        experts: the (k+1)-th largest of h if i is in the top k, else the k-th largest."""
        k = self.top_k
        in_top_k = noisy >= top_vals[:, k - 1 : k]  # h_i at least the k-th largest
        # t_i: column k of top_vals (the (k+1)-th largest) where i is in the top k, else k-1
        threshold = top_vals.gather(1, in_top_k.long() + (k - 1))
        return torch.special.ndtr((clean - threshold) / noise_std)


class SharedSwiGLUExperts(nn.Module):
    """E SwiGLU experts E_i(x) = (Swish(x W + b) * (x V + c)) W2 + b2 that share two of the
    three projections (`shared`, Table 9) and own the third, `expert_weight`/`expert_bias`
    (E, in, out). The shared ones are nn.Linear: `swish_proj` (W, b), `value_proj` (V, c),
    `out_proj` (W2, b2). The default v_w2 owns W: `expert_weight` is (E, d, h)."""

    def __init__(self, dim: int, hidden: int, num_experts: int, impl: str = "auto",
                 shared: str = "v_w2", top_k: int = 1):
        super().__init__()
        if shared not in SHARED:
            raise ValueError(f"shared={shared!r}: must be one of {', '.join(SHARED)}")
        self.impl, self.shared, self.owned = impl, shared, ARRANGEMENTS[shared].owned
        self.top_k = top_k  # the gates say it; the meta device, which has none, is told
        fan_in, fan_out = (hidden, dim) if self.owned == "w2" else (dim, hidden)
        self.expert_weight = nn.Parameter(torch.empty(num_experts, fan_in, fan_out))
        self.expert_bias = nn.Parameter(torch.empty(num_experts, fan_out))
        bound = 1 / math.sqrt(fan_in)  # each expert's own projection as its own nn.Linear
        nn.init.uniform_(self.expert_weight, -bound, bound)
        nn.init.uniform_(self.expert_bias, -bound, bound)
        if self.owned != "w":
            self.swish_proj = nn.Linear(dim, hidden)  # W, b (shared)
        if self.owned != "v":
            self.value_proj = nn.Linear(dim, hidden)  # V, c (shared)
        if self.owned != "w2":
            self.out_proj = nn.Linear(hidden, dim)  # W2, b2 (shared)

    def projections(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                   torch.Tensor, torch.Tensor]:
        """(W, b, V, c, W2, b2) in mlit.model.dispatch's order and layouts."""
        # hasattr, not self.owned: TorchScript resolves it when it compiles the module
        w, b = self.expert_weight, self.expert_bias
        v, c = self.expert_weight, self.expert_bias
        w2, b2 = self.expert_weight, self.expert_bias
        if hasattr(self, "swish_proj"):
            w, b = self.swish_proj.weight, self.swish_proj.bias
        if hasattr(self, "value_proj"):
            v, c = self.value_proj.weight, self.value_proj.bias
        if hasattr(self, "out_proj"):
            w2, b2 = self.out_proj.weight, self.out_proj.bias
        return w, b, v, c, w2, b2

    def forward(self, x: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        w, b, v, c, w2, b2 = self.projections()
        return expert_mixture(x, gates, w, b, v, c, w2, b2, shared=self.shared, impl=self.impl,
                              top_k=self.top_k)


class MoELayer(nn.Module):
    """y = sum_i G(x)_i E_i(x), then dropout (section 5). Tokens are flattened to (B*N, d)."""

    def __init__(self, dim: int, hidden: int, num_experts: int, top_k: int, dropout: float,
                 impl: str = "auto", shared: str = "v_w2", **gate_kwargs):
        super().__init__()
        self.num_experts = num_experts
        self.gate = NoisyTopKGate(dim, num_experts, top_k, **gate_kwargs)
        self.experts = SharedSwiGLUExperts(dim, hidden, num_experts, impl, shared, top_k)
        # Dropout of each expert's output, applied once to the gated sum (the same in
        # expectation; one mask instead of k), its CPU mask drawn fast (mlit/model/dropout.py)
        self.dropout = Dropout(dropout)
        self.register_buffer("last_load", torch.zeros(num_experts, dtype=torch.long),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])  # (B*N, d)
        gates, aux, load = self.gate(tokens)
        self.last_load.copy_(load)  # tokens routed to each expert, for logging
        y = self.experts(tokens, gates)
        return self.dropout(y).reshape(shape), aux


def moe_layer(dim: int, hidden: int, num_experts: int, cfg: MLiTConfig) -> MoELayer:
    """A layer's MoE with the configuration's gating and sharing."""
    return MoELayer(dim, hidden, num_experts, cfg.top_k, cfg.expert_dropout,
                    impl=cfg.moe_impl, shared=cfg.shared, noisy=cfg.noisy_gating,
                    noise_epsilon=cfg.noise_epsilon, importance_weight=cfg.importance_weight,
                    load_weight=cfg.load_weight, cv_epsilon=cfg.cv_epsilon)


def dense_mlp_width(dim: int, hidden: int, num_experts: int, cfg: MLiTConfig) -> int:
    """The hidden width of the dense ViT's Linear(d, w) + Linear(w, d) that holds as many
    parameters as the MoE layer it replaces (mlit/model/encoder.py's DenseMLP)."""
    with torch.device("meta"):
        moe = moe_layer(dim, hidden, num_experts, cfg)
    moe_params = sum(p.numel() for p in moe.parameters())
    return max(1, round((moe_params - dim) / (2 * dim + 1)))
