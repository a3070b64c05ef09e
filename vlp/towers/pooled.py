"""Pooled-only forward passes: the last transformer block evaluated at the pooled token only.

When the training objectives read only the pooled embeddings (CLIP, SigLIP, SLIP; not FILIP or
CoCa, which read every token), the last block's outputs at the other positions are never used.
Its keys and values still come from every position, but the query, attention output, output
projection and MLP are needed at one position per sample. For a 4-block tower that is about a
fifth of the tower's matrix work. The result is the same function (tested against the full
pass, values and gradients); open_clip and timm compute the whole last block.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def split_qkv(h: torch.Tensor, hq: torch.Tensor, qkv: nn.Linear, heads: int, dim: int):
    """Queries from ``hq [B, M, C]``, keys and values from ``h [B, N, C]`` with a fused qkv
    projection whose output rows are [q; k; v] (timm, vlp, nn.MultiheadAttention's layout).
    Returns ``q [B, H, M, D]``, ``k, v [B, H, N, D]``."""
    b, n, _ = h.shape
    w, bias = qkv.weight, qkv.bias
    q = F.linear(hq, w[:dim], None if bias is None else bias[:dim])
    kv = F.linear(h, w[dim:], None if bias is None else bias[dim:])
    q = q.view(b, hq.shape[1], heads, dim // heads).transpose(1, 2)
    k, v = kv.view(b, n, 2, heads, dim // heads).permute(2, 0, 3, 1, 4).unbind(0)
    return q, k, v


def timm_block_supported(block: nn.Module) -> bool:
    """A plain timm ViT ``Block`` with timm's ``Attention`` (the classes, not subclasses)."""
    from timm.layers import Attention
    from timm.models.vision_transformer import Block

    return (type(block) is Block and type(block.attn) is Attention
            and getattr(block.attn, "gate", None) is None)


def first_token_block_class():
    """``FirstTokenBlock``: timm's ViT ``Block`` whose call takes ``first_token_only=True`` to
    compute ``block(x)[:, :1]`` alone. TimmImageTower turns a ViT's last block into one (same
    parameters and names); the pooled-only pass calls it through ``block(...)``, so hooks of
    wrappers (FSDP2's ``fully_shard``, which subclasses it again) run as for any call."""
    global _FIRST_TOKEN_BLOCK
    if _FIRST_TOKEN_BLOCK is None:
        from timm.models.vision_transformer import Block

        class FirstTokenBlock(Block):
            def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False,
                        first_token_only: bool = False) -> torch.Tensor:
                if not first_token_only:
                    return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
                if attn_mask is not None or is_causal:
                    raise ValueError("first_token_only takes no attention mask")
                return _first_token(self, x)

        _FIRST_TOKEN_BLOCK = FirstTokenBlock
    return _FIRST_TOKEN_BLOCK


_FIRST_TOKEN_BLOCK = None


def _first_token(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``block(x)[:, :1]`` for a timm ViT block, computing only what position 0 needs."""
    a = block.attn
    h = block.norm1(x)
    b = x.shape[0]
    dim = a.num_heads * a.head_dim
    q, k, v = split_qkv(h, h[:, :1], a.qkv, a.num_heads, dim)
    q, k = a.q_norm(q), a.k_norm(k)
    o = F.scaled_dot_product_attention(q, k, v, dropout_p=a.attn_drop.p if a.training else 0.0)
    o = a.proj_drop(a.proj(a.norm(o.transpose(1, 2).reshape(b, 1, dim))))
    x0 = x[:, :1] + block.drop_path1(block.ls1(o))
    return x0 + block.drop_path2(block.ls2(block.mlp(block.norm2(x0))))
