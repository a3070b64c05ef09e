"""CoCa's unimodal text tower: CLIP's causal transformer with a class token appended to the text."""

from __future__ import annotations

import torch
from torch import nn

from vlp.towers.cached import CachedBlock, KVCache
from vlp.towers.output import TowerOutput
from vlp.towers.projection import Projection
from vlp.towers.recompute import call_block
from vlp.towers.text import TextTransformer


class CoCaTextTower(TextTransformer):
    """The unimodal text layers of CoCa (Yu et al. 2022; open_clip's ``TextTransformer`` with
    ``embed_cls=True`` and its corrected class-token mask).

    A learned class token is appended after the ``L`` input positions (position row ``L``);
    the causal transformer runs over ``L + 1`` positions, the class token attending to every
    non-padding token. The text embedding is read at the class token.

    Input ``text [B, L]`` token ids padded with the pad id (L <= context_length). Output
    (TowerOutput): ``features [B, width]`` = final LayerNorm of the class token's state,
    ``pooled [B, embed_dim]`` its projection, ``tokens [B, L, width]`` the last block's states
    at the text positions (before the final LayerNorm, as open_clip hands them to the
    multimodal decoder; causal, so the class token does not reach them), ``token_mask``
    (``text != pad_id``).

    Args: as vlp.towers.TextTransformer (always causal; ``grad_checkpointing`` in training
    passes, not in ``decode``). ``context_length`` counts the text
    positions; the positional embedding has one more row, for the class token (open_clip's
    coca_ViT-B-32: context 76, 77 rows).

    ``decode(ids, cache)`` runs the blocks incrementally on new text positions (generation).
    """

    def __init__(
        self,
        vocab_size: int = 8192,
        context_length: int = 32,
        width: int = 512,
        layers: int = 12,
        heads: int = 8,
        mlp_ratio: float = 4.0,
        embed_dim: int = 512,
        pad_id: int | None = None,
        proj: Projection = "linear",
        grad_checkpointing: bool = False,
    ):
        super().__init__(vocab_size, context_length + 1, width, layers, heads, mlp_ratio, embed_dim, causal=True,
                         pad_id=pad_id, proj=proj, grad_checkpointing=grad_checkpointing)
        self.context_length = context_length  # text positions; the class token takes row context_length
        self.cls_emb = nn.Parameter(torch.empty(width))
        nn.init.normal_(self.cls_emb, std=0.01)  # open_clip
        for block in self.blocks:  # same parameters, a call that also takes a cache
            block.__class__ = CachedBlock

    def forward(self, text: torch.Tensor, tokens: bool = True) -> TowerOutput:
        """``tokens=False``: the last block runs at the class token only (vlp.towers.pooled):
        same ``pooled`` and ``features``, no ``tokens``."""
        b, n = text.shape
        if n > self.context_length:
            raise ValueError(f"text has {n} tokens; the tower's context_length is {self.context_length}")
        keep = text != self.pad_id
        x = torch.cat([self.token_embedding(text), self.cls_emb.expand(b, 1, -1)], dim=1)
        x = x + self.positional_embedding[: n + 1]
        keys = torch.cat([keep, keep.new_ones(b, 1)], dim=1)  # [B, n+1]: the class token sees real tokens
        positions = torch.arange(n + 1, device=text.device)
        causal = positions[None, :] <= positions[:, None]
        # a query sees earlier non-padding keys and itself (no row is empty, even for padding)
        mask = (causal & (keys[:, None, :] | (positions[None, :] == positions[:, None])))[:, None]
        ckpt = self.grad_checkpointing
        if not tokens and len(self.blocks):
            for block in self.blocks[:-1]:
                x = call_block(block, x, False, mask, recompute=ckpt)
            last = torch.full((b,), n, dtype=torch.long, device=text.device)
            features = self.ln_final(call_block(self.blocks[-1], x, False, keys[:, None, None, :], at=last,
                                                recompute=ckpt))
            return TowerOutput(self.proj(features), features)
        for block in self.blocks:
            x = call_block(block, x, False, mask, recompute=ckpt)
        features = self.ln_final(x[:, -1])
        return TowerOutput(self.proj(features), features, x[:, :-1], keep)

    def decode(self, ids: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """The text positions' states ``[B, T, width]`` (as ``forward(...).tokens``) for ``T``
        new ids ``[B, T]`` that follow the positions in ``cache``, which takes their keys
        and values. No class token: the decoder reads the text positions only."""
        slot = cache.slot("text")
        start = slot.get("length", 0)
        t = ids.shape[1]
        if start + t > self.context_length:
            raise ValueError(f"decoding past the tower's context_length {self.context_length}")
        x = self.token_embedding(ids) + self.positional_embedding[start : start + t]
        for i, block in enumerate(self.blocks):
            x = block(x, True, None, cache=cache.slot(f"text.{i}"))
        slot["length"] = start + t
        return x
