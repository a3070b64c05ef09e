"""CLIP's text tower: a causal pre-LN transformer pooled at the end-of-text token."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vlp.data.text_spec import TextSpec
from vlp.towers.output import TowerOutput
from vlp.towers.pooled import split_qkv
from vlp.towers.projection import Projection, make_projection
from vlp.towers.recompute import call_block


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, causal: bool, mask: torch.Tensor | None) -> torch.Tensor:
        b, n, w = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        return self.out(y.transpose(1, 2).reshape(b, n, w))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.ln_1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor, causal: bool, mask: torch.Tensor | None,
                at: torch.Tensor | None = None) -> torch.Tensor:
        """``x [B, N, W]`` -> ``[B, N, W]``; with ``at [B]`` (a position per sample) only
        ``forward(x)[b, at[b]]`` is computed and returned (``[B, W]``, vlp.towers.pooled)."""
        if at is not None:
            return self._forward_at(x, at, causal, mask)
        x = x + self.attn(self.ln_1(x), causal, mask)
        return x + self.mlp(self.ln_2(x))

    def _forward_at(self, x: torch.Tensor, index: torch.Tensor, causal: bool, mask: torch.Tensor | None) -> torch.Tensor:
        b, n, w = x.shape
        rows = torch.arange(b, device=x.device)
        h = self.ln_1(x)
        q, k, v = split_qkv(h, h[rows, index].unsqueeze(1), self.attn.qkv, self.attn.heads, w)
        if causal:  # the query at position i sees keys 0..i
            mask = (torch.arange(n, device=x.device) <= index[:, None])[:, None, None, :]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x0 = x[rows, index] + self.attn.out(y.reshape(b, w))
        return x0 + self.mlp(self.ln_2(x0))


class TextTransformer(nn.Module):
    """CLIP text encoder (Radford et al. 2021; initialisation as open_clip).

    Input ``text [B, L]`` token ids padded with ``pad_id`` (L <= context_length);
    output (TowerOutput) ``features [B, width]`` taken at the last non-pad token (the
    end-of-text token) after the final LayerNorm, ``pooled [B, embed_dim]`` its projection,
    ``tokens [B, L, width]`` and ``token_mask`` (``text != pad_id``).

    Args:
        vocab_size: embedding rows; must cover the tokenizer's ids.
        context_length: the longest sequence (positional embedding rows).
        width, layers, heads, mlp_ratio: transformer shape.
        embed_dim: size of the shared image-text embedding.
        causal: causal attention (CLIP); False = bidirectional with a padding mask.
        pad_id: padding token id; None (default) = the tokenizer's, adopted from its spec by
            ``bind_text_spec`` (``vlp fit`` / ``vlp eval`` call it; until then 0, the built-in
            tokenizer's). A value given here must equal the tokenizer's.
        proj: ``linear`` (CLIP), ``mlp`` or ``none``.
        grad_checkpointing: activation checkpointing of every block (vlp.towers.recompute): less
            activation memory for one more forward pass of the blocks in the backward; the same
            gradients. ``set_grad_checkpointing(enable)`` switches it later.
    """

    input_ndim = 2  # [B, L] token ids

    def __init__(
        self,
        vocab_size: int = 8192,
        context_length: int = 32,
        width: int = 512,
        layers: int = 12,
        heads: int = 8,
        mlp_ratio: float = 4.0,
        embed_dim: int = 512,
        causal: bool = True,
        pad_id: int | None = None,
        proj: Projection = "linear",
        grad_checkpointing: bool = False,
    ):
        super().__init__()
        self.grad_checkpointing = bool(grad_checkpointing)
        self.vocab_size = vocab_size
        self.context_length = context_length
        self.causal = causal
        self.pad_id_given = pad_id
        self.pad_id = 0 if pad_id is None else pad_id
        self.text_spec: TextSpec | None = None
        self.embed_dim = embed_dim
        self.width = width  # of features and tokens
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio) for _ in range(layers))
        self.ln_final = nn.LayerNorm(width)
        self.proj = make_projection(proj, width, embed_dim)
        self._init(width, layers)

    def _init(self, width: int, layers: int) -> None:
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        attn_std = width**-0.5
        proj_std = attn_std * (2 * layers) ** -0.5
        fc_std = (2 * width) ** -0.5
        for block in self.blocks:
            nn.init.normal_(block.attn.qkv.weight, std=attn_std)
            nn.init.zeros_(block.attn.qkv.bias)
            nn.init.normal_(block.attn.out.weight, std=proj_std)
            nn.init.zeros_(block.attn.out.bias)
            nn.init.normal_(block.mlp[0].weight, std=fc_std)
            nn.init.normal_(block.mlp[2].weight, std=proj_std)
        if isinstance(self.proj, nn.Linear):
            nn.init.normal_(self.proj.weight, std=attn_std)

    def bind_text_spec(self, spec: TextSpec) -> None:
        """Mask and pool with the tokenizer's pad id; refuse a tokenizer with more ids or longer
        texts than this tower has embeddings for, or a different explicit ``pad_id``."""
        spec.check_part(vocab_size=self.vocab_size, context_length=self.context_length, pad_id=self.pad_id_given)
        self.pad_id = spec.pad_id
        self.text_spec = spec

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = bool(enable)

    def shard_units(self) -> list[nn.Module]:
        """The transformer blocks, each its own sharding unit."""
        return list(self.blocks)

    def forward(self, text: torch.Tensor, tokens: bool = True) -> TowerOutput:
        """``tokens=False``: no ``tokens`` in the output, and the last block runs at the pooled
        position only (through its normal call, so wrapped blocks work; vlp.towers.pooled),
        which gives the same ``pooled`` and ``features`` for less work."""
        b, n = text.shape
        if n > self.context_length:
            raise ValueError(f"text has {n} tokens; the tower's context_length is {self.context_length}")
        keep = text != self.pad_id
        x = self.token_embedding(text) + self.positional_embedding[:n]
        mask = None if self.causal else keep[:, None, None, :]
        last = keep.sum(1).clamp(min=1) - 1
        ckpt = self.grad_checkpointing
        if not tokens and len(self.blocks):
            for block in self.blocks[:-1]:
                x = call_block(block, x, self.causal, mask, recompute=ckpt)
            features = self.ln_final(call_block(self.blocks[-1], x, self.causal, mask, at=last, recompute=ckpt))
            return TowerOutput(self.proj(features), features)
        for block in self.blocks:
            x = call_block(block, x, self.causal, mask, recompute=ckpt)
        x = self.ln_final(x)
        features = x[torch.arange(b, device=x.device), last]
        return TowerOutput(self.proj(features), features, x, keep)
