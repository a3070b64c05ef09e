"""Parts defined outside vlp (as a user's package would): the tests build them through the CLI."""

import torch
import torch.nn.functional as F

from vlp.objectives import Objective


class TokenMatch(Objective):
    """Mean of a third tower's text tokens (padding masked out) against the views' pooled image
    embedding: reads another tower's tokens and token mask, and a shared name's output."""

    reads = frozenset({"aux.tokens", "aux.token_mask", "views.pooled"})
    default_name = "token_match"

    def __init__(self, weight: float = 1.0, name: str | None = None):
        super().__init__(weight, name)
        self.proj: torch.nn.Module | None = None
        self.seen: list[tuple] = []

    def attach(self, towers) -> None:
        self.proj = torch.nn.Linear(towers["aux"].width, towers["views"].embed_dim)

    def forward(self, outputs, batch):
        aux, views = outputs["aux"], outputs["views"]
        mask = aux.token_mask.unsqueeze(-1).to(aux.tokens.dtype)
        text = self.proj((aux.tokens * mask).sum(1) / mask.sum(1).clamp(min=1))  # [B, E]
        image = views.pooled.mean(1)  # [B, 2, E] -> [B, E]
        self.seen.append((tuple(aux.tokens.shape), tuple(views.pooled.shape)))
        return (F.normalize(text, dim=-1) - F.normalize(image, dim=-1)).pow(2).sum(-1).mean(), {}
