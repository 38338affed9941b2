"""The paper's model (docs/architecture.md, sections 1-8): what mLiT is, and nothing of how
it is trained, stored or served.

- config.py: MLiTConfig, every hyper-parameter of the architecture, validated;
- registry.py: the named sizes (mlit_s, mlit_xs, mlit_xxs, ...) and the factories;
- attention.py: grouped-query attention;
- moe.py: noisy top-k gating with its balancing losses, and the MoE layer;
- dispatch.py: the expert mixture's contract and its choice of implementation;
- mixtures.py: the PyTorch implementations (sparse reference, dense);
- kernel_check.py: the Triton kernel against the reference, before it is trusted;
- encoder.py: patch embedding with the dummy patch, depth-wise scaling, expert stages,
  the classifier;
- mae.py: mmLiT, the masked auto-encoder; simclr.py: contrastive pre-training;
- closed_form.py: the matrix products of the model's parts, which each module adds up;
- flops.py: FLOPs per image from those, counted on the real model to check, and the active
  parameters.

Imports torch, mlit.kernels and mlit.errors alone (an import-linter contract).
"""
