"""Attentional pooling: learned queries attend to a tower's tokens (CoCa, Yu et al. 2022)."""

from __future__ import annotations

import torch
from torch import nn


class AttentionalPooler(nn.Module):
    """``n_queries`` learned queries cross-attend to the tokens (open_clip's AttentionalPooler).

    ``x [B, N, context_dim]`` -> ``[B, n_queries, d_model]``: LayerNorm on the tokens (keys and
    values) and on the queries, then multi-head attention (torch's nn.MultiheadAttention, keys
    and values projected from ``context_dim``). Queries initialised N(0, 1) as open_clip.
    """

    def __init__(self, d_model: int, context_dim: int, n_head: int = 8, n_queries: int = 256):
        super().__init__()
        if d_model % n_head:
            raise ValueError(f"attentional pooler width {d_model} is not divisible by its heads {n_head}")
        self.query = nn.Parameter(torch.randn(n_queries, d_model))
        self.attn = nn.MultiheadAttention(d_model, n_head, kdim=context_dim, vdim=context_dim, batch_first=True)
        self.ln_q = nn.LayerNorm(d_model)
        self.ln_k = nn.LayerNorm(context_dim)

    def forward(self, x: torch.Tensor, key_padding: torch.Tensor | None = None) -> torch.Tensor:
        """``key_padding [B, N]``: True at tokens to ignore (nn.MultiheadAttention's convention)."""
        x = self.ln_k(x)
        q = self.ln_q(self.query).unsqueeze(0).expand(x.shape[0], -1, -1)
        return self.attn(q, x, x, key_padding_mask=key_padding, need_weights=False)[0]
