"""CoCa's multimodal text decoder, a named head of the module: causal self-attention,
cross-attention to image tokens, a vocabulary head (Yu et al. 2022; open_clip's
MultimodalTransformer). The captioning loss trains it; `vlp caption` and the CapPa scorer use it
(vlp.generation), each finding it by its name in ``model.heads``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vlp.errors import VLPError
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

    Its sizes come from the towers it reads (``attach``, called by the module): ``width``,
    ``vocab_size`` and ``context_length`` from the text tower (a vlp.towers.CoCaTextTower), the
    context width from the image tower's pooler queries (vlp.towers.CoCaImageTower's
    ``queries``). It takes the tokenizer's spec (``bind_text_spec``): the start, end and pad ids
    generation uses, and a vocabulary that must fit its head.

    Initialisation as open_clip's text transformers: attention in-projections N(0, width^-0.5),
    out-projections and second MLP layers N(0, width^-0.5 (2 layers)^-0.5), first MLP layers
    N(0, (2 width)^-0.5), attention biases zero, head N(0, width^-0.5).

    Args:
        layers, heads, mlp_ratio: the decoder's shape (open_clip's coca_ViT-B-32: 12 layers, 8 heads).
        image, text: the names of the towers it reads (the text tower's token states).
        image_part: the image tower's output it attends to: ``queries`` (CoCa's attentional
            pooler) or ``tokens`` (the trunk's tokens, as CapPa's decoder).
    """

    def __init__(self, layers: int = 12, heads: int = 8, mlp_ratio: float = 4.0, image: str = "image",
                 text: str = "text", image_part: str = "queries"):
        super().__init__()
        self.num_layers, self.num_heads, self.mlp_ratio = layers, heads, mlp_ratio
        self.image, self.text, self.image_part = image, text, image_part
        self.width: int | None = None
        self.vocab_size: int | None = None
        self.context_length: int | None = None
        self.text_spec = None  # the tokenizer's (bind_text_spec)

    def attach(self, towers) -> None:
        """Size the decoder on the towers it reads (``towers``: the module's, by name)."""
        text, image = towers.get(self.text), towers.get(self.image)
        if text is None or image is None:
            raise VLPError(f"the caption decoder reads the towers {self.image} and {self.text} (the names: "
                           f"{sorted(towers)})")
        needs = [a for a in ("width", "vocab_size", "context_length") if not isinstance(getattr(text, a, None), int)]
        if needs:
            raise VLPError(f"the caption decoder needs a text tower with {', '.join(needs)} (vlp.towers.CoCaTextTower)")
        if getattr(text, "causal", True) is False:
            raise VLPError("the caption decoder needs a causal text tower: a bidirectional one lets each position "
                           "see the token it is to predict")
        context_width = getattr(image, f"{self.image_part}_width", None)
        if not isinstance(context_width, int):
            raise VLPError(f"the caption decoder attends to {self.image}.{self.image_part}: the image tower must "
                           f"report its width as {self.image_part}_width (vlp.towers.CoCaImageTower)")
        if self.width is not None:
            return  # attached once (a module rebuilt around the same parts)
        width, layers, heads, mlp_ratio = text.width, self.num_layers, self.num_heads, self.mlp_ratio
        if width % heads:
            raise VLPError(f"the caption decoder's width {width} (the text tower's) is not divisible by heads {heads}")
        self.width, self.vocab_size, self.context_length = width, text.vocab_size, text.context_length
        self.blocks = nn.ModuleList(CachedBlock(width, heads, mlp_ratio) for _ in range(layers))
        self.cross = nn.ModuleList(CrossBlock(width, heads, mlp_ratio, context_width) for _ in range(layers))
        self.ln_final = nn.LayerNorm(width)
        self.head = nn.Linear(width, text.vocab_size, bias=False)
        self._init(width, layers)

    def context(self, image) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What it attends to in the image tower's output (a TowerOutput): ``[B, N, C]`` and a
        mask ``[B, N]`` (True at real tokens) or None."""
        if self.image_part == "tokens":
            return image.tokens, image.token_mask
        return image.part(self.image_part), None

    def bind_text_spec(self, spec) -> None:
        """Refuse a vocabulary larger than the head; keep the spec (generation's ids)."""
        spec.check_part(vocab_size=self.vocab_size)
        if spec.eos_id is None or spec.bos_id is None:
            raise VLPError("captioning needs a tokenizer with start and end-of-text ids")
        self.text_spec = spec

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
