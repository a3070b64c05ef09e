"""The one output type of every tower."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch


@dataclass
class TowerOutput:
    """What a tower computed for one input batch.

    - ``pooled [B, E]``: the projected embedding (not normalised; objectives normalise).
    - ``features [B, W]``: the pooled representation before the projection.
    - ``tokens [B, N, W]``: the trunk's last hidden states, one per token (for a CNN its last
      feature map flattened, row-major; never a pooler's outputs); None when the caller asked
      for pooled outputs only.
    - ``token_mask [B, N]``: True at real tokens (False at padding); None with ``tokens``.
    - ``prefix_tokens``: how many leading tokens are not content (class and register tokens
      of a ViT; 0 for CNNs and text towers).
    - ``grid``: an image tower's patch grid ``(h, w)``: the content tokens are its positions
      in row-major order (None for text).
    - ``kept [B, K]``: under FLIP masking, the grid positions (row-major indices into the
      ``h * w`` grid) of the ``K`` content tokens each image kept, in the order of ``tokens``;
      None when every position is there.
    - ``extra``: named outputs of a tower's poolers (CoCa's image tower: ``queries [B, Q, C]``,
      the attentional pooler's outputs the caption decoder attends to). Objectives read them
      as ``NAME.PART`` like the fields above (``image.queries``); a tower lists the names it
      makes in ``extra_parts``.
    """

    pooled: torch.Tensor
    features: torch.Tensor
    tokens: torch.Tensor | None = None
    token_mask: torch.Tensor | None = None
    prefix_tokens: int = 0
    grid: tuple[int, int] | None = None
    kept: torch.Tensor | None = None
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    def part(self, name: str):
        """The output ``name``: a field above or a named pooler output."""
        if name in self.extra:
            return self.extra[name]
        return getattr(self, name)

    def unflatten(self, lead: tuple[int, ...]) -> TowerOutput:
        """Split the batch dimension back into ``lead`` (a tower run on ``[B, 2, ...]`` views
        flattened to ``[2B, ...]`` gives outputs of shape ``[B, 2, ...]``)."""
        changed = {f.name: getattr(self, f.name).unflatten(0, lead) for f in fields(self)
                   if torch.is_tensor(getattr(self, f.name))}
        return replace(self, **changed, extra={k: v.unflatten(0, lead) for k, v in self.extra.items()})
