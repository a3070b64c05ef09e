"""CoCa's multimodal text decoder: causal self-attention, cross-attention to image tokens, a
vocabulary head (Yu et al. 2022; open_clip's MultimodalTransformer)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vlp.towers.cached import CachedBlock, KVCache


class CrossBlock(nn.Module):
    """Pre-LN cross-attention block: ``x + attn(ln_1(x), ln_1_kv(context))``, then an MLP
    (open_clip's ResidualAttentionBlock with ``is_cross_attention=True``; keys and values are
    projected from ``context_width``, which may differ from ``width``)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, context_width: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"decoder width {width} is not divisible by heads {heads}")
        self.heads = heads
        hidden = int(width * mlp_ratio)
        self.ln_1 = nn.LayerNorm(width)
        self.ln_1_kv = nn.LayerNorm(context_width)
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(context_width, 2 * width)
        self.out = nn.Linear(width, width)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None = None,
                cache: dict | None = None) -> torch.Tensor:
        """``x [B, T, W]`` attends to ``context [B, N, C]`` (``context_mask [B, N]``: True at real
        tokens; None = all). With ``cache``, the context's keys and values are computed once and
        kept there (the context is not read again)."""
        b, t, w = x.shape
        d = w // self.heads
        if cache is not None and "k" in cache:
            k, v, mask = cache["k"], cache["v"], cache.get("mask")
        else:
            n = context.shape[1]
            k, v = self.kv(self.ln_1_kv(context)).view(b, n, 2, self.heads, d).permute(2, 0, 3, 1, 4)
            mask = None if context_mask is None or bool(context_mask.all()) else context_mask[:, None, None, :]
            if cache is not None:
                cache["k"], cache["v"] = k, v
                if mask is not None:
                    cache["mask"] = mask
        q = self.q(self.ln_1(x)).view(b, t, self.heads, d).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.out(y.transpose(1, 2).reshape(b, t, w))
        return x + self.mlp(self.ln_2(x))


class CaptionDecoder(nn.Module):
    """``layers`` x (causal self-attention block, cross-attention block), final LayerNorm, and a
    bias-free vocabulary head (open_clip's MultimodalTransformer; it has no positional
    embedding: its input are the unimodal text tower's token states, which carry positions).

    ``forward(text [B, T, width], image [B, N, context_width], image_mask [B, N] | None,
    cache=None) -> logits [B, T, vocab_size]``; position ``t``'s logits predict token ``t + 1``.
    With a KVCache the ``T`` positions follow those already cached (generation).

    Initialisation as open_clip's text transformers: attention in-projections N(0, width^-0.5),
    out-projections and second MLP layers N(0, width^-0.5 (2 layers)^-0.5), first MLP layers
    N(0, (2 width)^-0.5), attention biases zero, head N(0, width^-0.5).
    """

    def __init__(self, width: int, layers: int, heads: int, vocab_size: int, context_width: int,
                 mlp_ratio: float = 4.0):
        super().__init__()
        self.width, self.vocab_size = width, vocab_size
        self.blocks = nn.ModuleList(CachedBlock(width, heads, mlp_ratio) for _ in range(layers))
        self.cross = nn.ModuleList(CrossBlock(width, heads, mlp_ratio, context_width) for _ in range(layers))
        self.ln_final = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab_size, bias=False)
        self._init(width, layers)

    def _init(self, width: int, layers: int) -> None:
        attn_std = width**-0.5
        proj_std = attn_std * (2 * max(layers, 1)) ** -0.5
        fc_std = (2 * width) ** -0.5
        for block in self.blocks:
            for linear, std in ((block.attn.qkv, attn_std), (block.attn.out, proj_std)):
                nn.init.normal_(linear.weight, std=std)
                nn.init.zeros_(linear.bias)
            nn.init.normal_(block.mlp[0].weight, std=fc_std)
            nn.init.normal_(block.mlp[2].weight, std=proj_std)
        for block in self.cross:
            for linear, std in ((block.q, attn_std), (block.kv, attn_std), (block.out, proj_std)):
                nn.init.normal_(linear.weight, std=std)
                nn.init.zeros_(linear.bias)
            nn.init.normal_(block.mlp[0].weight, std=fc_std)
            nn.init.normal_(block.mlp[2].weight, std=proj_std)
        nn.init.normal_(self.head.weight, std=attn_std)

    def forward(self, text: torch.Tensor, image: torch.Tensor, image_mask: torch.Tensor | None = None,
                cache: KVCache | None = None) -> torch.Tensor:
        x = text
        for i, (block, cross) in enumerate(zip(self.blocks, self.cross)):
            if cache is None:
                x = block(x, True, None)
                x = cross(x, image, image_mask)
            else:
                x = block(x, True, None, cache=cache.slot(f"decoder.{i}"))
                x = cross(x, image, image_mask, cache=cache.slot(f"decoder.cross.{i}"))
        return self.head(self.ln_final(x))
