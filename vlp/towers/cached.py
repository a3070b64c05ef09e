"""Incremental decoding: a key/value cache and the causal text block that reads and fills it.

Generation feeds one new token per step. Without a cache every step recomputes every earlier
position in every layer (quadratic in the caption length); with it each attention layer keeps
the keys and values of the positions it has seen and computes only the new ones. The cached
pass is the same function as the full causal pass (tested: same tokens and log-probabilities,
vlp.generation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlp.towers.text import Block


class KVCache:
    """Per-layer slots of cached tensors (``k``, ``v`` ``[B, H, S, D]``; cross-attention keys and
    values of the image tokens; positions), for a batch of sequences decoded together.

    Each attention layer owns one slot (a dict) by name. ``select(index)`` keeps rows
    ``index`` of every cached tensor (beam search reorders its beams; finished sequences
    leave the batch); other values (positions) are shared by all rows.
    """

    def __init__(self) -> None:
        self.slots: dict[str, dict] = {}

    def slot(self, name: str) -> dict:
        return self.slots.setdefault(name, {})

    def select(self, index: torch.Tensor) -> None:
        for slot in self.slots.values():
            for key, value in slot.items():
                if torch.is_tensor(value):
                    slot[key] = value.index_select(0, index)


def attend_cached(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slot: dict) -> torch.Tensor:
    """Causal attention of the new queries ``q [B, H, T, D]`` over the cached keys and values
    followed by the new ``k, v [B, H, T, D]``, which join the cache. Returns ``[B, H, T, D]``."""
    if "k" in slot:
        k = torch.cat([slot["k"], k], dim=2)
        v = torch.cat([slot["v"], v], dim=2)
    slot["k"], slot["v"] = k, v
    t, s = q.shape[2], k.shape[2]
    if t == 1:  # the one new query sees every key
        return F.scaled_dot_product_attention(q, k, v)
    # new query i sits at position s - t + i and sees keys 0 .. s - t + i
    mask = torch.arange(s, device=q.device)[None, :] <= torch.arange(t, device=q.device)[:, None] + (s - t)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class CachedBlock(Block):
    """The text transformer's pre-LN block (vlp.towers.text.Block, same parameters) whose call
    also takes ``cache=slot``: causal self-attention of the new positions over the cached ones.
    Generation calls it through ``block(...)`` so that wrappers' hooks run as for any call."""

    def forward(self, x: torch.Tensor, causal: bool, mask: torch.Tensor | None, at: torch.Tensor | None = None,
                cache: dict | None = None) -> torch.Tensor:
        if cache is None:
            return super().forward(x, causal, mask, at)
        if not causal or mask is not None or at is not None:
            raise ValueError("a cached block step is causal and takes no mask or position")
        b, t, w = x.shape
        heads = self.attn.heads
        q, k, v = self.attn.qkv(self.ln_1(x)).view(b, t, 3, heads, w // heads).permute(2, 0, 3, 1, 4)
        y = attend_cached(q, k, v, cache)
        x = x + self.attn.out(y.transpose(1, 2).reshape(b, t, w))
        return x + self.mlp(self.ln_2(x))
