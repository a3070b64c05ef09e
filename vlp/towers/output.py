"""The one output type of every tower."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch


@dataclass
class TowerOutput:
    """What a tower computed for one input batch.

    - ``pooled [B, E]``: the projected embedding (not normalised; objectives normalise).
    - ``features [B, W]``: the pooled representation before the projection.
    - ``tokens [B, N, W]``: the last hidden states, one per token (for a CNN its last feature
      map flattened, row-major); None when the caller asked for pooled outputs only.
    - ``token_mask [B, N]``: True at real tokens (False at padding); None with ``tokens``.
    - ``prefix_tokens``: how many leading tokens are not content (class and register tokens
      of a ViT; 0 for CNNs and text towers).
    """

    pooled: torch.Tensor
    features: torch.Tensor
    tokens: torch.Tensor | None = None
    token_mask: torch.Tensor | None = None
    prefix_tokens: int = 0

    def unflatten(self, lead: tuple[int, ...]) -> TowerOutput:
        """Split the batch dimension back into ``lead`` (a tower run on ``[B, 2, ...]`` views
        flattened to ``[2B, ...]`` gives outputs of shape ``[B, 2, ...]``)."""
        return replace(self, **{f.name: getattr(self, f.name).unflatten(0, lead) for f in fields(self)
                                if torch.is_tensor(getattr(self, f.name))})
