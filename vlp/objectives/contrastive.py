"""CLIP's symmetric contrastive loss (Radford et al. 2021; open_clip's ClipLoss)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vlp.objectives.base import Objective, check_embed_dims
from vlp.distributed import all_gather_with_grad, rank_and_world
from vlp.towers.output import TowerOutput


class ContrastiveLoss(Objective):
    """Symmetric InfoNCE over image and text embeddings with a learned temperature.

    ``loss = (CE(s * I T^T, y) + CE(s * T I^T, y)) / 2`` with ``s = exp(logit_scale)``,
    ``logit_scale`` initialised to ``ln(1/0.07)`` and clamped to ``[0, ln 100]`` where it is
    used (open_clip clamps the parameter in place after each step; the clamp in the forward
    gives the same scale without editing the parameter behind the strategy's back). Under several ranks, each rank scores its
    own rows against the features of all ranks, gathered with gradient
    (open_clip's ``local_loss=True, gather_with_grad=True``): the loss and the
    gradients then equal those of one process on the whole batch.

    Reads ``a.pooled`` and ``b.pooled`` (``[B, E]``; by default ``image`` and ``text``),
    L2-normalised here.

    Args:
        weight, name: see Objective.
        a, b: the names whose embeddings it contrasts (towers or shared names of the module):
            ``image`` / ``text`` (CLIP), or e.g. ``image`` / ``text_zh`` for a second language.
        init_logit_scale: initial ``logit_scale`` (log of the inverse temperature).
        max_logit_scale: upper clamp of ``logit_scale``.
        learn_logit_scale: False keeps the temperature fixed.
        label_smoothing: cross-entropy label smoothing (ALIGN uses 0.1).
    """

    default_name = "contrastive"

    def __init__(
        self,
        weight: float = 1.0,
        name: str | None = None,
        a: str = "image",
        b: str = "text",
        init_logit_scale: float = math.log(1 / 0.07),
        max_logit_scale: float = math.log(100),
        learn_logit_scale: bool = True,
        label_smoothing: float = 0.0,
    ):
        super().__init__(weight, name)
        self.a, self.b = a, b
        self.reads = frozenset({f"{a}.pooled", f"{b}.pooled"})
        self.logit_scale = nn.Parameter(torch.tensor([float(init_logit_scale)]), requires_grad=learn_logit_scale)
        self.max_logit_scale = max_logit_scale
        self.label_smoothing = label_smoothing

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
        all_image, all_text = all_gather_with_grad(image), all_gather_with_grad(text)
        scale = self.scale()
        logits_per_image = scale * image @ all_text.T
        logits_per_text = scale * text @ all_image.T
        labels = torch.arange(image.shape[0], device=image.device) + rank * image.shape[0]
        loss = (
            F.cross_entropy(logits_per_image, labels, label_smoothing=self.label_smoothing)
            + F.cross_entropy(logits_per_text, labels, label_smoothing=self.label_smoothing)
        ) / 2
        return loss, {"logit_scale": scale.detach()}
