"""The objective contract."""

from __future__ import annotations

import torch
from torch import nn


class Objective(nn.Module):
    """Base class of objectives.

    Args:
        weight: factor of this loss in the total.
        name: the name under which the loss is logged (``train/<name>_loss``).

    Class attribute ``needs``: the batch fields the objective reads; the module
    checks that the batch has them. ``needs_tokens``: the objective reads the towers'
    per-token outputs (``image_tokens`` / ``text_tokens``); when no objective does, the towers
    compute only the pooled outputs (vlp.towers.pooled).
    """

    needs: frozenset[str] = frozenset({"image", "text"})
    needs_tokens: bool = False
    default_name = "objective"

    def __init__(self, weight: float = 1.0, name: str | None = None):
        super().__init__()
        self.weight = weight
        self.name = name or self.default_name

    def forward(self, outputs: dict[str, torch.Tensor], batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def attach(self, image_tower: nn.Module, text_tower: nn.Module) -> None:
        """Called once by VLPModule with the towers (e.g. to size a projector on their width)."""

    def after_optimizer_step(self) -> None:
        """Called after each optimiser step (e.g. to clamp a learned temperature)."""
