"""Text tower on transformers (BERT-like), built from a config or a local directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from vlp.data.text_spec import TextSpec
from vlp.errors import VLPError
from vlp.towers.output import TowerOutput
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
        pad_id: padding id of the tokenizer (attention mask = text != pad_id); None (default) =
            the tokenizer's, adopted from its spec by ``bind_text_spec`` (until then the
            transformer's ``pad_token_id``, else 0). A value given here must equal the tokenizer's.
        grad_checkpointing: activation checkpointing of the encoder's layers in training
            (transformers' ``activation_checkpointing_enable``, ``gradient_checkpointing_enable``
            before transformers 5; non-reentrant): less activation memory for one more forward
            pass of the layers in the backward, the same gradients.

    Input ``text [B, L]``; output (TowerOutput) ``features [B, hidden]`` (pooled),
    ``pooled [B, embed_dim]``, ``tokens [B, L, hidden]`` and ``token_mask`` (``text != pad_id``).
    """

    input_ndim = 2  # [B, L] token ids

    def __init__(
        self,
        path: str | None = None,
        config: dict[str, Any] | None = None,
        embed_dim: int = 512,
        pooler: Literal["cls", "mean"] = "mean",
        proj: Projection = "mlp",
        pad_id: int | None = None,
        grad_checkpointing: bool = False,
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
        if grad_checkpointing:
            self.set_grad_checkpointing(True)
        width = self.transformer.config.hidden_size
        self.vocab_size = self.transformer.config.vocab_size
        self.context_length = getattr(self.transformer.config, "max_position_embeddings", None)
        self.pooler = pooler
        self.pad_id_given = pad_id
        model_pad = getattr(self.transformer.config, "pad_token_id", None)
        self.pad_id = pad_id if pad_id is not None else model_pad if model_pad is not None else 0
        self.text_spec: TextSpec | None = None
        self.embed_dim = embed_dim
        self.width = width  # of features and tokens
        self.proj = make_projection(proj, width, embed_dim)

    @property
    def grad_checkpointing(self) -> bool:
        return bool(getattr(self.transformer, "is_gradient_checkpointing", False))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing of the encoder's layers on or off (transformers' switch)."""
        model = self.transformer
        if not enable:
            disable = getattr(model, "activation_checkpointing_disable", None)  # transformers >= 5
            (disable or model.gradient_checkpointing_disable)()
            return
        if not getattr(model, "supports_gradient_checkpointing", False):
            raise VLPError(f"text tower {type(model).__name__} has no gradient checkpointing "
                           "(text_tower.grad_checkpointing)")
        kwargs = {"use_reentrant": False}
        enable_fn = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5
        if enable_fn is not None:
            enable_fn(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    def bind_text_spec(self, spec: TextSpec) -> None:
        """Mask and pool with the tokenizer's pad id; refuse a tokenizer with more ids or longer
        texts than the transformer has embeddings for, a different explicit ``pad_id``, or a
        transformer whose ``pad_token_id`` differs (its embeddings treat that id as padding:
        RoBERTa / XLM-R count positions from it, BERT keeps its embedding at zero)."""
        spec.check_part(vocab_size=self.vocab_size, context_length=self.context_length, pad_id=self.pad_id_given)
        model_pad = getattr(self.transformer.config, "pad_token_id", None)
        if model_pad is not None and model_pad != spec.pad_id:
            raise VLPError(f"the transformer's pad_token_id {model_pad} differs from the tokenizer's pad id "
                           f"{spec.pad_id} (a tokenizer made for another model? a config sets pad_token_id)")
        self.pad_id = spec.pad_id
        self.text_spec = spec

    def shard_units(self) -> list[nn.Module]:
        """The encoder's layers (BERT-like models), each its own sharding unit."""
        layers = getattr(getattr(self.transformer, "encoder", None), "layer", None)
        return list(layers) if isinstance(layers, nn.ModuleList) else []

    def forward(self, text: torch.Tensor, tokens: bool = True) -> TowerOutput:
        """``tokens=False`` leaves ``tokens`` out of the output (the encoder runs in full)."""
        mask = text != self.pad_id
        hidden = self.transformer(input_ids=text, attention_mask=mask.long()).last_hidden_state
        if self.pooler == "cls":
            features = hidden[:, 0]
        else:
            m = mask.unsqueeze(-1).to(hidden.dtype)
            features = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
        if not tokens:
            return TowerOutput(self.proj(features), features)
        return TowerOutput(self.proj(features), features, hidden, mask)
