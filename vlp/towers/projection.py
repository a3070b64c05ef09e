"""The projection heads that map a tower's width to the shared embedding size."""

from __future__ import annotations

from typing import Literal

from torch import nn

Projection = Literal["linear", "mlp", "none"]


def make_projection(kind: Projection, width: int, embed_dim: int) -> nn.Module:
    """``linear``: CLIP's bias-free matrix. ``mlp``: open_clip's HF head
    (width -> (width+embed)/2 -> embed, GELU, no biases). ``none``: identity (width must equal embed_dim)."""
    if kind == "linear":
        return nn.Linear(width, embed_dim, bias=False)
    if kind == "mlp":
        hidden = (width + embed_dim) // 2
        return nn.Sequential(nn.Linear(width, hidden, bias=False), nn.GELU(), nn.Linear(hidden, embed_dim, bias=False))
    if kind == "none":
        if width != embed_dim:
            raise ValueError(f"projection 'none' needs width == embed_dim, got {width} != {embed_dim}")
        return nn.Identity()
    raise ValueError(f"unknown projection {kind!r}: expected linear, mlp or none")
