"""CoCa's image tower: a timm trunk with attentional pooling for the decoder and the embedding."""

from __future__ import annotations

import torch
from torch import nn

from vlp.errors import VLPError
from vlp.towers.attention_pool import AttentionalPooler
from vlp.towers.output import TowerOutput
from vlp.towers.projection import make_projection
from vlp.towers.timm_image import TimmImageTower


class CoCaImageTower(TimmImageTower):
    """A TimmImageTower whose outputs come from two attentional poolers over all of the trunk's
    tokens (Yu et al. 2022, sec. 3.2, "task-specific attentional pooling"; open_clip's
    ``attentional_pool='parallel'``): ``pool_queries`` learned queries make the tokens the
    captioning decoder attends to, one more query makes the contrastive embedding.

    Output (TowerOutput): ``extra["queries"] [B, pool_queries, pool_width]`` (read as
    ``image.queries``: what the caption decoder attends to), ``features [B, pool_width]`` the
    contrastive query's output, ``pooled [B, embed_dim]`` its projection, and the trunk's
    ``tokens`` with their grid as vlp.towers.TimmImageTower gives them. The trunk's tokens
    arrive normalised (timm's final norm) and both pooled outputs pass one more shared
    LayerNorm: open_clip's original CoCa (one pooler) normalises after it, its ``parallel``
    mode before the poolers only (benchmarks/open_clip_coca.py maps these weights onto
    open_clip's CoCa exactly by adding the after-pool norm there). ``tokens=False`` skips the
    decoder pooler (same ``pooled``). So ContrastiveLoss reads ``image.pooled`` unchanged and
    the caption decoder (vlp.heads.CaptionDecoder) ``image.queries``.

    Args:
        pool_queries: decoder queries (CoCa and open_clip: 256).
        pool_heads: attention heads of both poolers (open_clip: 8).
        pool_width: width of the pooled tokens; None = ``embed_dim`` (open_clip pools to its
            output dim, which is also its decoder's width).
        every other argument: as vlp.towers.TimmImageTower (FLIP ``mask_ratio``, ``lock`` of a
            pretrained trunk with ``pretrained_path``, ``model_kwargs``, ...); ``init_from``
            (a vlp checkpoint) is not supported here.
    """

    extra_parts = frozenset({"queries"})

    def __init__(self, model_name: str, embed_dim: int = 512, pool_queries: int = 256, pool_heads: int = 8,
                 pool_width: int | None = None, **kwargs):
        if kwargs.get("init_from") is not None:
            raise VLPError("CoCaImageTower does not load init_from checkpoints; give pretrained_path (a timm "
                           "checkpoint) for its trunk")
        if kwargs.get("head", "new") != "new":
            raise VLPError("CoCaImageTower's projection follows its poolers: head must be new")
        super().__init__(model_name, embed_dim=embed_dim, **kwargs)
        if pool_queries < 1:
            raise VLPError(f"pool_queries must be >= 1, got {pool_queries}")
        trunk_width = self.width
        self.width = pool_width or embed_dim  # of features and queries
        self.queries_width = self.width
        try:
            self.attn_pool = AttentionalPooler(self.width, trunk_width, pool_heads, pool_queries)
            self.attn_pool_contrastive = AttentionalPooler(self.width, trunk_width, pool_heads, 1)
        except ValueError as e:
            raise VLPError(f"CoCaImageTower: {e}") from None
        self.ln_post = nn.LayerNorm(self.width)
        self.proj = make_projection(kwargs.get("proj", "linear"), self.width, embed_dim)
        if isinstance(self.proj, nn.Linear):
            nn.init.normal_(self.proj.weight, std=trunk_width**-0.5)  # open_clip: scale = width ** -0.5

    def forward(self, image: torch.Tensor, tokens: bool = True) -> TowerOutput:
        trunk_out = self.trunk.forward_features(image)
        hidden = trunk_out.flatten(2).transpose(1, 2) if trunk_out.ndim == 4 else trunk_out  # a CNN's map
        features = self.ln_post(self.attn_pool_contrastive(hidden)[:, 0])
        pooled = self.proj(features)
        if not tokens:
            return TowerOutput(pooled, features, prefix_tokens=self.prefix_tokens)
        queries = self.ln_post(self.attn_pool(hidden))
        return TowerOutput(pooled, features, **self.token_outputs(trunk_out, image), extra={"queries": queries})
