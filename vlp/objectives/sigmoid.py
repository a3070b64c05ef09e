"""SigLIP's pairwise sigmoid loss (Zhai et al. 2023; big_vision's sigmoid loss)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vlp.objectives.base import Objective, check_embed_dims
from vlp.distributed import all_gather_with_grad, rank_and_world
from vlp.towers.output import TowerOutput


class SigmoidLoss(Objective):
    """Every image-text pair is a binary problem: ``z_ij = t * <I_i, T_j> + b``, label
    ``+1`` for the pair on the diagonal and ``-1`` elsewhere,
    ``loss = -1/N sum_i sum_j log sigmoid(label_ij * z_ij)`` (sum over texts, mean over
    images, as big_vision). ``t = exp(logit_scale)`` with ``logit_scale`` initialised to
    ``ln 10`` and the bias ``b`` to ``-10``, both learned; ``logit_scale`` is clamped to
    ``[0, max_logit_scale]`` where it is used (open_clip clamps it in place after each step).
    Reads ``a.pooled`` and ``b.pooled`` (by default ``image`` and ``text``), L2-normalised here.

    Under several ranks each rank scores its own images against the texts of all ranks,
    gathered with gradient, so the loss and gradients equal those of one process on the
    whole batch (big_vision exchanges text chunks between neighbours; the sums are the same).

    Args:
        weight, name: see Objective.
        a, b: the names whose embeddings it scores (as ContrastiveLoss).
        init_logit_scale: initial ``logit_scale`` (``ln 10``).
        init_logit_bias: initial bias (``-10``).
        max_logit_scale: upper clamp of ``logit_scale``.
    """

    default_name = "sigmoid"

    def __init__(self, weight: float = 1.0, name: str | None = None, a: str = "image", b: str = "text",
                 init_logit_scale: float = math.log(10), init_logit_bias: float = -10.0,
                 max_logit_scale: float = math.log(100)):
        super().__init__(weight, name)
        self.a, self.b = a, b
        self.reads = frozenset({f"{a}.pooled", f"{b}.pooled"})
        self.logit_scale = nn.Parameter(torch.tensor([float(init_logit_scale)]))
        self.logit_bias = nn.Parameter(torch.tensor([float(init_logit_bias)]))
        self.max_logit_scale = max_logit_scale

    @property
    def compares(self) -> tuple[str, str]:
        """The names whose embeddings it scores against each other (eval asks for its scale)."""
        return self.a, self.b

    def scale(self) -> torch.Tensor:
        """The temperature as the loss uses it: ``exp(logit_scale)`` clamped, 0-d."""
        return self.logit_scale.clamp(0, self.max_logit_scale).exp().squeeze(0)  # [1] (FSDP2 shards no 0-d tensor)

    def attach(self, towers) -> None:
        check_embed_dims(self, towers, (self.a, self.b))

    def forward(self, outputs: dict[str, TowerOutput], batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image, text = F.normalize(outputs[self.a].pooled, dim=-1), F.normalize(outputs[self.b].pooled, dim=-1)
        rank, _ = rank_and_world()
        all_text = all_gather_with_grad(text)
        scale = self.scale()
        bias = self.logit_bias.squeeze(0)
        logits = scale * image @ all_text.T + bias  # [B_local, B_total]
        labels = -torch.ones_like(logits)
        rows = torch.arange(image.shape[0], device=image.device)
        labels[rows, rows + rank * image.shape[0]] = 1.0
        loss = -F.logsigmoid(labels * logits).sum(dim=1).mean()
        return loss, {"logit_scale": scale.detach(), "logit_bias": bias.detach()}
