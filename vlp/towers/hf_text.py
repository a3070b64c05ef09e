"""Text tower on transformers (BERT-like), built from a config or a local directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from vlp.errors import VLPError
from vlp.towers.projection import Projection, make_projection


class HFTextTower(nn.Module):
    """A transformers encoder + pooling + projection (open_clip's HFTextEncoder).

    Args:
        path: a local model directory (``local_files_only``: nothing is downloaded).
        config: or a config dict for ``AutoConfig.for_model`` (needs ``model_type``),
            for a randomly initialised tower.
        embed_dim: size of the shared embedding.
        pooler: ``cls`` (first token, as ALIGN) or ``mean`` (masked mean, open_clip's default).
        proj: ``linear``, ``mlp`` (open_clip's default for HF towers) or ``none``.
        pad_id: padding id of the tokenizer (attention mask = text != pad_id).

    Input ``text [B, L]``; output ``pooled [B, embed_dim]``, ``tokens [B, L, hidden]``.
    """

    def __init__(
        self,
        path: str | None = None,
        config: dict[str, Any] | None = None,
        embed_dim: int = 512,
        pooler: Literal["cls", "mean"] = "mean",
        proj: Projection = "mlp",
        pad_id: int = 0,
    ):
        super().__init__()
        from transformers import AutoConfig, AutoModel

        if (path is None) == (config is None):
            raise VLPError("HFTextTower needs exactly one of path (a local directory) or config")
        if path is not None:
            if not Path(path).is_dir():
                raise VLPError(f"text tower directory not found: {path}")
            self.transformer = AutoModel.from_pretrained(path, local_files_only=True)
        else:
            cfg = dict(config)
            if "model_type" not in cfg:
                raise VLPError("HFTextTower config needs a model_type (e.g. bert)")
            self.transformer = AutoModel.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg))
        if getattr(self.transformer, "pooler", None) is not None:
            self.transformer.pooler = None  # unused: its parameters would get no gradient
        width = self.transformer.config.hidden_size
        self.vocab_size = self.transformer.config.vocab_size
        self.context_length = getattr(self.transformer.config, "max_position_embeddings", None)
        self.pooler = pooler
        self.pad_id = pad_id
        self.embed_dim = embed_dim
        self.proj = make_projection(proj, width, embed_dim)

    def forward(self, text: torch.Tensor, tokens: bool = True) -> dict[str, torch.Tensor]:
        """``tokens`` is accepted for the tower contract; this tower always returns them."""
        mask = (text != self.pad_id).long()
        tokens = self.transformer(input_ids=text, attention_mask=mask).last_hidden_state
        if self.pooler == "cls":
            pooled = tokens[:, 0]
        else:
            m = mask.unsqueeze(-1).to(tokens.dtype)
            pooled = (tokens * m).sum(1) / m.sum(1).clamp(min=1)
        return {"pooled": self.proj(pooled), "tokens": tokens}
