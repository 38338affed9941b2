"""Grouped-query attention (docs/architecture.md, section 3; Ainslie et al. 2023).

H query heads of size d/H share G key/value heads: query head i reads key/value head
i // (H/G). G = 1 is multi-query attention, G = H is plain multi-head attention.
"""

import torch
import torch.nn.functional as F
from torch import nn


class GroupedQueryAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, num_kv_groups: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim={dim}: must be divisible by num_heads={num_heads}")
        if num_heads % num_kv_groups:
            raise ValueError(f"num_heads={num_heads}: must be divisible by "
                             f"num_kv_groups={num_kv_groups}")
        self.num_heads = num_heads
        self.num_kv_groups = num_kv_groups
        self.head_dim = dim // num_heads
        kv_dim = num_kv_groups * self.head_dim
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, kv_dim)
        self.v_proj = nn.Linear(dim, kv_dim)
        self.o_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        q = self.q_proj(x).view(B, N, self.num_heads, self.head_dim).transpose(1, 2)  # (B,H,N,hd)
        k = self.k_proj(x).view(B, N, self.num_kv_groups, self.head_dim).transpose(1, 2)  # (B,G,N,hd)
        v = self.v_proj(x).view(B, N, self.num_kv_groups, self.head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, enable_gqa=self.num_kv_groups != self.num_heads)
        # explicit sizes: -1 is undefined for a batch of 0 images
        return self.o_proj(out.transpose(1, 2).reshape(B, N, self.num_heads * self.head_dim))
